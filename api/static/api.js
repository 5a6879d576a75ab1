// The API as the page uses it: the bearer token (this tab's sessionStorage only), JSON requests that turn error
// bodies into ApiError with the server's message, and the chat stream (OpenAI-compatible SSE with kb's extra fields).

const TOKEN = "kb.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN, value);
  else sessionStorage.removeItem(TOKEN);
}

export function authHeaders() {
  const value = token();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

async function failure(response) {
  const body = await response.json().catch(() => ({}));
  const message = (body.error && body.error.message) || body.detail || `HTTP ${response.status}`;
  return new ApiError(response.status, message);
}

/** fetch with the bearer; JSON in and out; throws ApiError for any status >= 400. */
export async function request(method, path, body) {
  const headers = { ...authHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** A response body as a Blob (exports), with the file name the server proposes. */
export async function download(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw await failure(response);
  const disposition = response.headers.get("content-disposition") || "";
  const name = (disposition.match(/filename="([^"]+)"/) || [])[1] || "export";
  return { blob: await response.blob(), name };
}

/**
 * POST /v1/chat/completions with stream=true and call `on` for each SSE chunk:
 * on.content(text), on.progress(step), on.final(chunk: sources, steps, session_id, message_id, grounding…),
 * on.error(message). Resolves when the stream ends; rejects with ApiError when the request itself fails.
 */
export async function streamChat(body, on, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      dispatch(event, on);
    }
  }
  if (buffer.trim()) dispatch(buffer, on);
}

function dispatch(event, on) {
  // An SSE event may span several `data:` lines; the server sends one JSON document per event.
  const data = event
    .split("\n")
    .filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(5).trimStart())
    .join("\n")
    .trim();
  if (!data || data === "[DONE]") return;
  const chunk = JSON.parse(data);
  if (chunk.error) return on.error(chunk.error.message || "error");
  if (chunk.progress) on.progress(chunk.progress);
  const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
  if (delta.content) on.content(delta.content);
  if (chunk.session_id || chunk.sources || chunk.message_id !== undefined) on.final(chunk);
}
