"""Feature computation for the fraud-scoring model."""

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Payment:
    card_token: str
    device_id: str
    amount_minor: int
    currency: str
    bin_country: str
    ip_country: str
    created_at: datetime


def velocity(history: list[Payment], payment: Payment, window: timedelta) -> int:
    """Number of payments with the same card token within the window before this payment."""
    start = payment.created_at - window
    return sum(1 for p in history if p.card_token == payment.card_token and start <= p.created_at < payment.created_at)


def country_mismatch(payment: Payment) -> bool:
    """True when the card was issued in another country than the buyer's IP address."""
    return payment.bin_country != payment.ip_country


def amount_zscore(amount_minor: int, merchant_mean: float, merchant_std: float) -> float:
    """How unusual the amount is for this merchant, in standard deviations."""
    if merchant_std == 0:
        return 0.0
    return (amount_minor - merchant_mean) / merchant_std
