"""FastAPI routes of the merchant-facing payments API."""

from fastapi import APIRouter, Header, HTTPException
from pydantic import BaseModel, Field

router = APIRouter(prefix="/v2/payments")


class CreatePayment(BaseModel):
    amount_minor: int = Field(gt=0, description="Amount in minor units (cents).")
    currency: str = Field(pattern="^[A-Z]{3}$")
    card_token: str = Field(description="Token from card-vault; never a raw card number.")
    merchant_reference: str | None = None


@router.post("", status_code=201)
async def create_payment(body: CreatePayment, idempotency_key: str = Header(alias="Idempotency-Key")) -> dict:
    """Create and authorise a payment; the Idempotency-Key header is required."""
    if len(idempotency_key) > 64:
        raise HTTPException(status_code=400, detail="Idempotency-Key longer than 64 characters")
    return {"status": "pending", "amount_minor": body.amount_minor, "currency": body.currency}


@router.get("/{payment_id}")
async def get_payment(payment_id: str) -> dict:
    """Return the current state of one payment."""
    raise HTTPException(status_code=404, detail=f"payment {payment_id} not found")
