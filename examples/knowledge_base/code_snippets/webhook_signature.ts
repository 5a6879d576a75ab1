import { createHmac, timingSafeEqual } from "crypto";

// Verifies the Paylane-Signature header of a merchant webhook: t=<unix>,v1=<hex hmac-sha256>.
export function verifyWebhookSignature(payload: string, header: string, secret: string, toleranceSeconds = 300): boolean {
  const parts = Object.fromEntries(header.split(",").map((kv) => kv.split("=") as [string, string]));
  const timestamp = Number(parts["t"]);
  if (!timestamp || Math.abs(Date.now() / 1000 - timestamp) > toleranceSeconds) {
    return false;
  }
  const expected = createHmac("sha256", secret).update(`${timestamp}.${payload}`).digest();
  const received = Buffer.from(parts["v1"] ?? "", "hex");
  return received.length === expected.length && timingSafeEqual(received, expected);
}

// Builds the header value for outgoing webhooks.
export function signWebhook(payload: string, secret: string, now = Math.floor(Date.now() / 1000)): string {
  const mac = createHmac("sha256", secret).update(`${now}.${payload}`).digest("hex");
  return `t=${now},v1=${mac}`;
}
