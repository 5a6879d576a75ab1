"""Settlement report generation: merchant payouts per day. 结算报表：按天汇总商户结算金额。"""

from collections import defaultdict
from decimal import Decimal


def payouts_by_merchant(entries: list[dict]) -> dict[str, Decimal]:
    """Sum settled amounts per merchant; amounts arrive in minor units. 按商户汇总结算金额。"""
    totals: dict[str, int] = defaultdict(int)
    for entry in entries:
        if entry["status"] == "settled":
            totals[entry["merchant_id"]] += entry["amount_minor"]
    return {merchant: Decimal(total) / 100 for merchant, total in totals.items()}


def fees(amount: Decimal, rate_percent: Decimal, fixed: Decimal) -> Decimal:
    """Interchange-plus fee: percentage plus a fixed part, rounded half-up to cents."""
    return (amount * rate_percent / 100 + fixed).quantize(Decimal("0.01"))
