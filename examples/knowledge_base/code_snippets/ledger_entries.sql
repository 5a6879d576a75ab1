-- Double-entry ledger schema (ledger-service). Amounts in minor units; never floating point.
CREATE TABLE accounts (
    id          uuid PRIMARY KEY,
    owner_id    uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('merchant_balance', 'merchant_reserve', 'scheme_settlement', 'fees', 'fx')),
    currency    char(3) NOT NULL
);

CREATE TABLE transactions (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL,
    payment_id  uuid,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE entries (
    transaction_id uuid NOT NULL REFERENCES transactions (id),
    account_id     uuid NOT NULL REFERENCES accounts (id),
    amount_minor   bigint NOT NULL,
    currency       char(3) NOT NULL
);

-- Every transaction balances to zero per currency.
CREATE FUNCTION check_balanced() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM entries WHERE transaction_id = NEW.transaction_id
               GROUP BY currency HAVING sum(amount_minor) <> 0) THEN
        RAISE EXCEPTION 'transaction % does not balance', NEW.transaction_id;
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
