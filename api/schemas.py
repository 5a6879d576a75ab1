"""Request and response bodies. Chat follows OpenAI's schema; extras are documented fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Bounds on what reaches the index and PostgreSQL; the body limit (APISettings.max_request_bytes) caps the rest.
Name = Annotated[str, Field(min_length=1, max_length=100)]
FilterValue = Annotated[str, Field(max_length=500)]
Collections = Annotated[list[Name], Field(max_length=20, description="At most 20 collection names.")]
Filters = Annotated[
    dict[Name, FilterValue | Annotated[list[FilterValue], Field(max_length=50)]],
    Field(max_length=20, description="At most 20 metadata keys, each a value or a list of up to 50."),
]
User = Annotated[str, Field(max_length=200)]  # kb_sessions.user is varchar(200)
MessageText = Annotated[str, Field(max_length=100_000)]
ContentParts = Annotated[list[dict[str, Any]], Field(max_length=100)]


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: MessageText | ContentParts | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # OpenAI content parts: keep the text parts
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request; unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(max_length=200, description="'default' or a name from GET /v1/models.")
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=200)
    stream: bool = False
    user: User | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    session_id: str | None = Field(default=None, max_length=64, description="Extra: continue this stored conversation.")
    collections: Collections | None = Field(default=None, description="Extra: search only these collections.")
    filters: Filters | None = Field(default=None, description="Extra: metadata filters (lang, namespace, …).")


class QueryRequest(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    collections: Collections | None = None
    filters: Filters | None = None
    answer: bool = Field(default=True, description="False: sources and timings only, no LLM call.")
    agent: bool = Field(default=False, description="True: answer through the agent (live connectors and the knowledge base).")
    user: User | None = None


class Source(BaseModel):
    n: int
    collection: str
    path: str
    section: str | None
    score: float
    cited: bool
    snippet: str
    url: str = Field(description="Link to the indexed document in this API.")
    metadata: dict[str, Any] = {}


class QueryResponse(BaseModel):
    answer: str | None
    answerable: bool
    sources: list[Source]
    grounding: dict[str, Any] | None = Field(
        default=None, description="What citation grounding did to the answer: markers kept and dropped, sentences left out."
    )
    timings: dict[str, float]
    language: str
    error: str | None = None
    steps: list[dict[str, Any]] | None = Field(default=None, description="Tool calls of an agent answer.")


class ErasureReport(BaseModel):
    """What DELETE /v1/me/data (or an admin's DELETE /v1/admin/users/{user}/data) removed, at once and for good."""

    user: str
    sessions: int = Field(description="Sessions deleted: open, closed, and deleted ones still in their grace.")
    messages: int = Field(description="Messages of those sessions.")
    archived_sessions: int = Field(description="Sessions deleted from the archive (idle more than 90 days).")
    tool_calls: int = Field(description="Rows of the tool-call log (kb_tool_calls) made by the user's questions.")
    feedback: int = Field(description="The user's votes on answers, other people's included.")
    session_tokens_revoked: int = Field(description="Sign-in (LDAP) session tokens ended.")
    api_keys_revoked: int = Field(description="API keys revoked: only an admin's erasure revokes them.")
    audit_seq: int = Field(description="The audit row recording this erasure; audit rows are kept for their retention.")


class FeedbackRequest(BaseModel):
    """A thumbs up or down on an answer, with an optional comment (masked before it is stored)."""

    rating: Literal["up", "down"]
    comment: str | None = Field(default=None, max_length=2_000, description="Optional; at most 2,000 characters.")


class FeedbackOut(BaseModel):
    """One user's stored feedback on one answer."""

    id: int
    message_id: int
    session_id: str
    user: str = Field(description="Who gave it.")
    rating: Literal["up", "down"]
    comment: str | None = Field(description="As stored: masked.")
    created_at: datetime
    updated_at: datetime = Field(description="When the vote was last given; a second vote replaces the first.")
