// The web client: sign-in, the conversation list (search, new, rename, export, delete), streamed answers rendered as
// Markdown with their tool steps, sources and clickable citations, a side panel for the cited chunk, filters, the
// model or task route, and thumbs up/down with a comment on every answer. It talks only to the public API.

import { ApiError, download, request, setToken, streamChat, token } from "./api.js";
import { icon, placeIcons } from "./icons.js";
import { LANGUAGES, initialLanguage, language, setLanguage, t, translate } from "./i18n.js";
import { renderMarkdown, snippetNodes } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const MODEL = "kb.model";
const NARROW = window.matchMedia("(max-width: 700px)");
// Source metadata that describes the ranking, not the document: never offered as a filter.
const NOT_FILTERS = new Set(["dense_score", "sparse_score", "dense_rank", "sparse_rank"]);

const state = {
  me: null,
  sessionId: null,
  closed: false,
  sessions: [],
  controller: null, // the running answer's AbortController
  panelTrigger: null, // what had focus before the source panel opened
  metaKeys: new Set(),
  searchTimer: 0,
};
// Set as attributes: `list` is a read-only property (assigning it throws in a module), `role` is not reflected everywhere.
const ATTRIBUTES = new Set(["list", "role"]);
const turnData = new WeakMap(); // article.turn → {sources, messageId, text}

// ---------------------------------------------------------------- elements and small helpers

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (ATTRIBUTES.has(key) || key.startsWith("aria-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function toast(message) {
  const box = $("toast");
  box.textContent = message;
  box.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => box.classList.remove("show"), 3000);
}

function hideToast() {
  const box = $("toast");
  box.style.transition = "none"; // at once, not faded (the old language must not linger)
  box.classList.remove("show");
  box.textContent = "";
  requestAnimationFrame(() => (box.style.transition = ""));
}

function errorText(error) {
  if (error instanceof ApiError) return error.message || t("error.status", { status: error.status });
  return t("error.network");
}

/** Sign-in ended (401) anywhere: back to the form; anything else: said in a toast. */
function handle(error) {
  if (error instanceof ApiError && error.status === 401) return showSignIn(t("signin.ended"));
  toast(errorText(error));
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No Clipboard API (a page served over plain HTTP to another host): the old selection way.
    const area = el("textarea", { value: text });
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  // The label only: an icon beside it stays.
  const label = button.querySelector(".label") || button;
  const before = label.textContent;
  label.textContent = t("answer.copied");
  button.classList.add("done");
  setTimeout(() => {
    label.textContent = before;
    button.classList.remove("done");
  }, 1500);
}

function formatDate(value) {
  const date = new Date(value);
  const sameDay = date.toDateString() === new Date().toDateString();
  const options = sameDay ? { hour: "2-digit", minute: "2-digit" } : { day: "numeric", month: "short", year: "numeric" };
  return new Intl.DateTimeFormat(language(), options).format(date);
}

// ---------------------------------------------------------------- sign-in

function showSignIn(message) {
  setToken(null);
  state.me = null;
  $("signin").hidden = false;
  for (const id of ["ask", "who", "sidebar", "menu", "model-box", "closed-note"]) $(id).hidden = true;
  closePanel();
  clearLog();
  $("empty").hidden = true;
  $("signin-error").textContent = message || "";
  $("username").focus();
}

// Who the stored token signs in as (with sign-in off on the server, no token is needed); the form when there is
// none or it no longer works.
async function checkSignIn() {
  const had = Boolean(token());
  let me;
  try {
    me = await request("GET", "/v1/auth/me");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return showSignIn(had ? t("signin.ended") : "");
    return showSignIn(errorText(error));
  }
  state.me = me;
  showWho();
  $("signin").hidden = true;
  for (const id of ["who", "ask", "sidebar", "menu"]) $(id).hidden = false;
  $("signout-box").hidden = me.method === "local";
  await Promise.all([loadModels(), loadSessions()]);
  renderCollections(me.collections);
  // The address keeps the open conversation: a reload (or a shared link to one's own conversation) returns to it.
  const wanted = decodeURIComponent(location.hash.replace(/^#/, ""));
  if (location.hash.startsWith("#source?")) return openLinkedSource(location.hash.slice("#source?".length));
  if (!wanted || !(await openSession(wanted))) newChat();
}

// A citation link from another client (Open WebUI's sources panel): a new chat with the cited chunk beside it.
function openLinkedSource(query) {
  const params = new URLSearchParams(query);
  const collection = params.get("collection") || "";
  const path = params.get("path") || "";
  history.replaceState(null, "", location.pathname);
  newChat();
  if (!collection || !path) return;
  const url = `/v1/documents/${encodeURIComponent(collection)}/${path.split("/").map(encodeURIComponent).join("/")}`;
  openSource({ n: params.get("n") || "", collection, path, section: params.get("section") || "", score: null, snippet: "", url });
}

function showWho() {
  if (!state.me) return;
  const long = t("who", { user: state.me.user, roles: state.me.roles.join(", ") || t("who.norole") });
  // A narrow screen shows the user alone; the whole line stays the element's accessible text.
  $("who-text").replaceChildren(
    el("span", { className: "who-long", textContent: long }),
    el("span", { className: "who-short", textContent: state.me.user, "aria-hidden": "true" }),
  );
}

async function signIn(event) {
  event.preventDefault();
  const key = $("apikey").value.trim();
  let credential = key;
  if (!key) {
    const username = $("username").value.trim();
    const password = $("password").value;
    if (!username || !password) {
      $("signin-error").textContent = t("signin.missing");
      return;
    }
    try {
      credential = (await request("POST", "/v1/auth/login", { username, password })).token;
    } catch (error) {
      $("signin-error").textContent = errorText(error);
      return;
    }
  }
  $("password").value = "";
  $("apikey").value = "";
  setToken(credential);
  await checkSignIn();
}

async function signOut(event) {
  event.preventDefault();
  await request("POST", "/v1/auth/logout").catch(() => {});
  state.sessionId = null;
  history.replaceState(null, "", location.pathname);
  showSignIn(t("signin.signedout"));
}

// ---------------------------------------------------------------- models and filters

async function loadModels() {
  let listing;
  try {
    listing = await request("GET", "/v1/models");
  } catch (error) {
    return handle(error);
  }
  const select = $("model");
  const wanted = localStorage.getItem(MODEL) || "default";
  select.replaceChildren();
  for (const model of listing.data) {
    const label =
      model.id === "default"
        ? t("model.default")
        : model.routes_to
          ? t("model.route", { task: model.id, model: model.routes_to })
          : model.id;
    select.append(el("option", { value: model.id, textContent: label, dataset: { id: model.id } }));
  }
  select.value = listing.data.some((m) => m.id === wanted) ? wanted : "default";
  $("model-box").hidden = listing.data.length < 2;
}

function renderCollections(names) {
  const box = $("collection-list");
  box.replaceChildren();
  for (const name of names || []) {
    const input = el("input", { type: "checkbox", value: name, name: "collection" });
    input.addEventListener("change", updateFilterCount);
    box.append(el("label", { className: "check" }, input, ` ${name}`));
  }
}

function addFilterRow(key = "", value = "") {
  const keyInput = el("input", { className: "meta-key", value: key, list: "meta-keys", autocomplete: "off" });
  keyInput.dataset.i18nAriaLabel = "filters.key";
  keyInput.dataset.i18nPlaceholder = "filters.key";
  const valueInput = el("input", { className: "meta-value", value, autocomplete: "off" });
  valueInput.dataset.i18nAriaLabel = "filters.value";
  valueInput.dataset.i18nPlaceholder = "filters.value";
  const remove = el("button", { type: "button", className: "icon" }, icon("close"));
  remove.dataset.i18nAriaLabel = "filters.remove";
  remove.dataset.i18nTitle = "filters.remove";
  const row = el("div", { className: "meta-row" }, keyInput, el("span", { textContent: "=" }), valueInput, remove);
  remove.addEventListener("click", () => {
    row.remove();
    updateFilterCount();
  });
  for (const input of [keyInput, valueInput]) input.addEventListener("input", updateFilterCount);
  $("meta-rows").append(row);
  translate(row);
  keyInput.focus();
}

/** What the chat request gets: the ticked collections (none ticked: all readable) and key → value(s) filters. */
function currentFilters() {
  const collections = [...document.querySelectorAll("#collection-list input:checked")].map((i) => i.value);
  const filters = {};
  for (const row of document.querySelectorAll("#meta-rows .meta-row")) {
    const key = row.querySelector(".meta-key").value.trim();
    const values = row
      .querySelector(".meta-value")
      .value.split(",")
      .map((v) => v.trim())
      .filter(Boolean);
    if (key && values.length) filters[key] = values.length === 1 ? values[0] : values;
  }
  return { collections, filters };
}

function updateFilterCount() {
  const { collections, filters } = currentFilters();
  const n = collections.length + Object.keys(filters).length;
  $("filter-count").textContent = n ? t("filters.active", { n }) : "";
}

function rememberMetadataKeys(sources) {
  for (const source of sources || []) {
    for (const key of Object.keys(source.metadata || {})) {
      if (NOT_FILTERS.has(key) || state.metaKeys.has(key)) continue;
      state.metaKeys.add(key);
      $("meta-keys").append(el("option", { value: key }));
    }
  }
}

// ---------------------------------------------------------------- the conversation list

async function loadSessions() {
  try {
    state.sessions = (await request("GET", "/v1/sessions?limit=100")).data;
  } catch (error) {
    return handle(error);
  }
  if (!$("conv-search").value.trim()) renderSessionList();
}

function renderSessionList() {
  const list = $("conversations");
  list.replaceChildren(...state.sessions.map(sessionItem));
  $("conv-empty").hidden = state.sessions.length > 0;
  $("conv-empty").textContent = t("conv.none");
}

function sessionItem(session) {
  const open = el(
    "button",
    { type: "button", className: "conv-open" },
    el("span", { className: "conv-title", textContent: session.title || t("conv.untitled") }),
    el("small", {
      className: "muted",
      textContent: formatDate(session.updated_at) + (session.closed ? ` · ${t("conv.closed")}` : ""),
    }),
  );
  if (session.id === state.sessionId) open.setAttribute("aria-current", "true");
  open.addEventListener("click", () => openSession(session.id));
  const actions = el(
    "div",
    { className: "conv-actions" },
    action("rename", "conv.rename", icon("pencil"), () => startRename(session, item)),
    action("export-md", "conv.exportMd", "MD", () => exportSession(session.id, "md")),
    action("export-json", "conv.exportJson", "JSON", () => exportSession(session.id, "json")),
    action("delete", "conv.delete", icon("trash"), () => confirmDelete(session)),
  );
  const item = el("li", { className: "conv", dataset: { id: session.id } }, open, actions);
  if (session.id === state.sessionId) item.classList.add("active");
  return item;
}

function action(cls, key, symbol, onClick) {
  const button = el("button", { type: "button", className: `icon ${cls}` }, symbol);
  button.dataset.i18nAriaLabel = key;
  button.dataset.i18nTitle = key;
  button.setAttribute("aria-label", t(key));
  button.title = t(key);
  button.addEventListener("click", onClick);
  return button;
}

async function searchSessions() {
  const q = $("conv-search").value.trim();
  if (!q) return renderSessionList();
  let hits;
  try {
    hits = (await request("GET", `/v1/sessions/search?q=${encodeURIComponent(q)}`)).data;
  } catch (error) {
    return handle(error);
  }
  if ($("conv-search").value.trim() !== q) return; // a newer search is on its way
  // One entry a conversation: its best-ranked message (the server sends hits by rank).
  const seen = new Set();
  hits = hits.filter((hit) => !seen.has(hit.session_id) && seen.add(hit.session_id));
  const list = $("conversations");
  list.replaceChildren(
    ...hits.map((hit) => {
      const open = el(
        "button",
        { type: "button", className: "conv-open" },
        el("span", { className: "conv-title", textContent: hit.title || t("conv.untitled") }),
        el("small", { className: "snippet" }, snippetNodes(hit.snippet)),
      );
      open.addEventListener("click", () => openSession(hit.session_id));
      return el("li", { className: "conv hit", dataset: { id: hit.session_id } }, open);
    }),
  );
  $("conv-empty").hidden = hits.length > 0;
  $("conv-empty").textContent = t("conv.nohits", { q });
}

function startRename(session, item) {
  const input = el("input", { className: "rename-input", value: session.title, maxLength: 200 });
  input.dataset.i18nAriaLabel = "conv.renameField";
  input.setAttribute("aria-label", t("conv.renameField"));
  const open = item.querySelector(".conv-open");
  open.hidden = true;
  item.prepend(input);
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    input.remove();
    open.hidden = false;
    if (!save || !title || title === session.title) return open.focus();
    try {
      const renamed = await request("PATCH", `/v1/sessions/${encodeURIComponent(session.id)}`, { title });
      session.title = renamed.title;
      open.querySelector(".conv-title").textContent = renamed.title;
      toast(t("conv.renamed"));
    } catch (error) {
      handle(error);
    }
    open.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      finish(true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
}

async function exportSession(id, format) {
  try {
    const { blob, name } = await download(`/v1/sessions/${encodeURIComponent(id)}/export?format=${format}`);
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (error) {
    handle(error);
  }
}

function confirmDelete(session) {
  const dialog = $("confirm-delete");
  $("delete-body").textContent = t("delete.body", { title: session.title });
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "delete") return;
    try {
      await request("DELETE", `/v1/sessions/${encodeURIComponent(session.id)}`);
    } catch (error) {
      return handle(error);
    }
    toast(t("conv.deleted"));
    if (state.sessionId === session.id) newChat();
    await loadSessions();
    if ($("conv-search").value.trim()) await searchSessions();
    $("new-chat").focus();
  };
  dialog.showModal();
  $("delete-confirm").focus();
}

function markActive() {
  for (const item of document.querySelectorAll("#conversations li.conv")) {
    const active = item.dataset.id === state.sessionId;
    item.classList.toggle("active", active);
    const open = item.querySelector(".conv-open");
    if (active) open.setAttribute("aria-current", "true");
    else open.removeAttribute("aria-current");
  }
}

// ---------------------------------------------------------------- conversations

function clearLog() {
  for (const turn of [...$("log").querySelectorAll("article.turn")]) turn.remove();
}

function setClosed(closed) {
  state.closed = closed;
  $("closed-note").hidden = !closed;
  $("question").disabled = closed;
  $("send").disabled = closed;
}

function newChat() {
  stopAnswer();
  state.sessionId = null;
  setClosed(false);
  clearLog();
  closePanel();
  $("empty").hidden = false;
  history.replaceState(null, "", location.pathname);
  markActive();
  closeSidebar();
  $("question").focus();
}

/** Show a stored conversation with its sources and the user's votes; false when it cannot be read. */
async function openSession(id) {
  stopAnswer();
  let chat;
  let votes;
  try {
    [chat, votes] = await Promise.all([
      request("GET", `/v1/sessions/${encodeURIComponent(id)}`),
      request("GET", `/v1/sessions/${encodeURIComponent(id)}/feedback`)
        .then((r) => r.data)
        .catch(() => []),
    ]);
  } catch (error) {
    handle(error);
    return false;
  }
  state.sessionId = id;
  setClosed(Boolean(chat.closed));
  clearLog();
  closePanel();
  $("empty").hidden = true;
  const byMessage = new Map(votes.map((v) => [v.message_id, v]));
  let turn = null;
  for (const message of chat.messages) {
    if (message.role === "user") {
      turn = addTurn(message.content);
    } else if (message.role === "assistant") {
      if (!turn) turn = addTurn("");
      finishTurn(turn, {
        text: message.content,
        sources: message.sources,
        messageId: message.id,
        vote: byMessage.get(message.id),
      });
      turn = null;
    }
  }
  history.replaceState(null, "", `#${encodeURIComponent(id)}`);
  markActive();
  closeSidebar();
  $("log").scrollTop = $("log").scrollHeight;
  return true;
}

/** A question and the place for its answer: steps, Markdown answer, sources, copy and feedback. */
function addTurn(question) {
  $("empty").hidden = true;
  const steps = el("ul", { className: "steps" });
  steps.dataset.i18nAriaLabel = "answer.steps";
  steps.setAttribute("aria-label", t("answer.steps"));
  const answer = el("div", { className: "a md" });
  const sources = el("ol", { className: "sources" });
  sources.dataset.i18nAriaLabel = "answer.sources";
  sources.setAttribute("aria-label", t("answer.sources"));
  const article = el(
    "article",
    { className: "turn" },
    el("div", { className: "q", dir: "auto", textContent: question }),
    el(
      "div",
      { className: "reply" },
      steps,
      answer,
      el("div", { className: "route muted" }),
      sources,
      el("div", { className: "actions" }),
    ),
  );
  $("log").append(article);
  turnData.set(article, { sources: [], messageId: null, text: "" });
  return article;
}

function markdownOptions(article) {
  return {
    label: t,
    copy: copyText,
    citation: (n) => {
      const source = turnData.get(article).sources.find((s) => s.n === n);
      const button = el("button", { type: "button", className: "cite", textContent: `[${n}]`, dataset: { n: String(n) } });
      if (source) button.setAttribute("aria-label", t("cite.open", { n, where: sourceWhere(source) }));
      else button.setAttribute("aria-disabled", "true");
      return button;
    },
  };
}

function sourceWhere(source) {
  return `${source.collection}/${source.path}` + (source.section ? ` § ${source.section}` : "");
}

function renderAnswer(article, text) {
  turnData.get(article).text = text;
  renderMarkdown(article.querySelector(".a"), text, markdownOptions(article));
}

// One line per tool call of the agent: started, then its outcome, time and whether it came from the cache.
function showStep(steps, step) {
  const key = `${step.connector}.${step.tool} ${JSON.stringify(step.arguments)}`;
  let li = [...steps.children].find((item) => item.dataset.key === key && !item.dataset.outcome);
  if (!li) {
    li = el("li", { dataset: { key } });
    steps.append(li);
  }
  const args = Object.entries(step.arguments || {})
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
  const status = step.outcome
    ? `${step.outcome} · ${Math.round(step.ms)} ms${step.cached ? ` · ${t("step.cached")}` : ""}`
    : t("step.running");
  li.textContent = `→ ${step.connector}.${step.tool}(${args}) ${status}`;
  if (step.outcome) li.dataset.outcome = step.outcome;
}

function showSources(article, sources) {
  const list = article.querySelector("ol.sources");
  list.replaceChildren();
  for (const source of sources) {
    const link = el("a", { href: source.url, textContent: sourceWhere(source) });
    link.addEventListener("click", (event) => {
      event.preventDefault();
      openSource(source, link);
    });
    const item = el(
      "li",
      { value: source.n, className: source.cited ? "cited" : "" },
      link,
      el("span", { className: "score muted", textContent: ` ${t("cite.score", { score: source.score.toFixed(3) })}` }),
    );
    list.append(item);
  }
}

/** The answer is complete: final Markdown with live citations, sources, copy and feedback controls. */
function finishTurn(article, { text, sources, messageId, vote, steps, route }) {
  const data = turnData.get(article);
  data.sources = sources || [];
  data.messageId = messageId ?? null;
  rememberMetadataKeys(data.sources);
  renderAnswer(article, text);
  const stepList = article.querySelector("ul.steps");
  for (const step of steps || []) {
    const key = `${step.connector}.${step.tool} ${JSON.stringify(step.arguments)}`;
    if (![...stepList.children].some((item) => item.dataset.key === key)) showStep(stepList, step);
  }
  showSources(article, data.sources);
  if (route) {
    const box = article.querySelector(".route");
    box.textContent = t("answer.route", { model: route.model, task: route.task });
  }
  renderActions(article, vote);
  const answer = article.querySelector(".a");
  answer.removeAttribute("aria-busy");
  answer.dataset.done = "true";
}

function renderActions(article, vote) {
  const data = turnData.get(article);
  const box = article.querySelector(".actions");
  const copy = el(
    "button",
    { type: "button", className: "copy-answer" },
    icon("copy"),
    el("span", { className: "label", textContent: t("answer.copy"), dataset: { i18n: "answer.copy" } }),
  );
  copy.addEventListener("click", () => copyText(data.text, copy));
  box.replaceChildren(copy);
  if (!data.messageId) return;
  const up = voteButton("up", "vote.up");
  const down = voteButton("down", "vote.down");
  const comment = el("textarea", { className: "comment-text", rows: 2, maxLength: 2000 });
  comment.dataset.i18nAriaLabel = "vote.comment";
  comment.dataset.i18nPlaceholder = "vote.comment";
  comment.setAttribute("aria-label", t("vote.comment"));
  comment.placeholder = t("vote.comment");
  const send = el("button", {
    type: "submit",
    className: "comment-send",
    textContent: t("vote.send"),
    dataset: { i18n: "vote.send" },
  });
  const form = el("form", { className: "comment", hidden: true }, comment, send);
  const status = el("span", { className: "vote-status muted", role: "status" });
  box.append(up, down, status, form);
  const show = (rating, text) => {
    up.setAttribute("aria-pressed", String(rating === "up"));
    down.setAttribute("aria-pressed", String(rating === "down"));
    form.hidden = !rating;
    if (text !== undefined) comment.value = text || "";
  };
  show(vote ? vote.rating : null, vote ? vote.comment : "");
  const give = async (rating, withComment) => {
    const body = { rating };
    if (withComment && comment.value.trim()) body.comment = comment.value.trim();
    try {
      const stored = await request("POST", `/v1/messages/${data.messageId}/feedback`, body);
      show(stored.rating, stored.comment ?? undefined);
      status.textContent = t("vote.thanks");
      form.scrollIntoView({ block: "nearest" });
      if (!withComment) comment.focus();
    } catch (error) {
      handle(error);
    }
  };
  for (const [button, rating] of [
    [up, "up"],
    [down, "down"],
  ]) {
    button.addEventListener("click", async () => {
      if (button.getAttribute("aria-pressed") !== "true") return give(rating, false);
      try {
        await request("DELETE", `/v1/messages/${data.messageId}/feedback`);
        show(null, "");
        status.textContent = t("vote.removed");
      } catch (error) {
        handle(error);
      }
    });
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    give(up.getAttribute("aria-pressed") === "true" ? "up" : "down", true);
  });
  comment.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}

function voteButton(rating, key) {
  const button = el("button", { type: "button", className: `vote ${rating}` }, icon(rating));
  button.dataset.i18nAriaLabel = key;
  button.dataset.i18nTitle = key;
  button.setAttribute("aria-label", t(key));
  button.title = t(key);
  button.setAttribute("aria-pressed", "false");
  return button;
}

// ---------------------------------------------------------------- asking

function stopAnswer() {
  if (state.controller) state.controller.abort();
  state.controller = null;
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("question").toggleAttribute("aria-busy", busy);
}

async function ask(event) {
  event.preventDefault();
  if (state.controller || state.closed) return;
  const question = $("question").value.trim();
  if (!question) return;
  $("question").value = "";
  autoGrow();
  const article = addTurn(question);
  const answer = article.querySelector(".a");
  answer.setAttribute("aria-busy", "true");
  answer.append(el("span", { className: "thinking muted", textContent: t("answer.thinking") }));
  const steps = article.querySelector("ul.steps");
  const { collections, filters } = currentFilters();
  const body = { model: $("model").value || "default", messages: [{ role: "user", content: question }] };
  if (state.sessionId) body.session_id = state.sessionId;
  if (collections.length) body.collections = collections;
  if (Object.keys(filters).length) body.filters = filters;
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  scrollToEnd(true);
  let text = "";
  let final = null;
  let frame = 0;
  const started = state.sessionId;
  try {
    await streamChat(
      body,
      {
        content: (piece) => {
          text += piece;
          if (!frame) {
            frame = requestAnimationFrame(() => {
              frame = 0;
              renderAnswer(article, text);
              scrollToEnd();
            });
          }
        },
        progress: (step) => showStep(steps, step),
        final: (chunk) => {
          final = chunk;
          if (chunk.session_id) state.sessionId = chunk.session_id;
        },
        error: (message) => {
          text += (text ? "\n\n" : "") + message;
          answer.classList.add("error");
        },
      },
      controller.signal,
    );
  } catch (error) {
    if (error.name === "AbortError") text += (text ? "\n\n" : "") + t("answer.stopped");
    else if (error instanceof ApiError && error.status === 401) {
      state.controller = null;
      setBusy(false);
      return showSignIn(t("signin.ended"));
    } else {
      text = errorText(error);
      answer.classList.add("error");
    }
  } finally {
    cancelAnimationFrame(frame);
    if (state.controller === controller) state.controller = null;
    setBusy(false);
  }
  finishTurn(article, {
    text,
    sources: final ? final.sources : [],
    messageId: final ? final.message_id : null,
    steps: final ? final.steps : [],
    route: final ? final.route : null,
  });
  scrollToEnd();
  if (state.sessionId && state.sessionId !== started) {
    history.replaceState(null, "", `#${encodeURIComponent(state.sessionId)}`);
  }
  await loadSessions();
  markActive();
}

function scrollToEnd(force = false) {
  const log = $("log");
  const near = log.scrollHeight - log.scrollTop - log.clientHeight < 120;
  if (force || near) log.scrollTop = log.scrollHeight;
}

function autoGrow() {
  const area = $("question");
  area.style.height = "auto";
  area.style.height = `${Math.min(area.scrollHeight, 220)}px`;
}

// ---------------------------------------------------------------- the source panel

async function openSource(source, trigger) {
  state.panelTrigger = trigger || document.activeElement;
  const panel = $("panel");
  $("panel-title").textContent = t("panel.title", { n: source.n });
  $("panel-collection").textContent = source.collection;
  $("panel-path").textContent = source.path;
  $("panel-section").textContent = source.section || t("panel.nosection");
  $("panel-score").textContent = source.score == null ? "–" : source.score.toFixed(3);
  $("panel-snippet").textContent = source.snippet.length >= 300 ? `${source.snippet}…` : source.snippet; // the API cuts at 300
  const doc = $("panel-doc");
  doc.replaceChildren(el("p", { className: "muted", textContent: t("panel.loading") }));
  panel.hidden = false;
  document.body.classList.add("panel-open");
  $("panel-close").focus();
  let body;
  try {
    body = await request("GET", source.url);
  } catch (error) {
    doc.replaceChildren(el("p", { className: "error", textContent: errorText(error) }));
    return;
  }
  const head = source.snippet.slice(0, 120);
  let cited = null;
  doc.replaceChildren(
    ...body.chunks.map((chunk) => {
      const section = chunk.metadata && chunk.metadata.section;
      const block = el(
        "section",
        { className: "chunk" },
        section ? el("h4", { textContent: section }) : null,
        el("pre", { textContent: chunk.text }),
      );
      // A linked source has no snippet: its section marks the chunk.
      const match = head ? chunk.text.startsWith(head) : Boolean(source.section) && section === source.section;
      if (!cited && match) {
        cited = block;
        block.classList.add("cited");
      }
      return block;
    }),
  );
  if (cited) cited.scrollIntoView({ block: "nearest" });
}

function closePanel() {
  const panel = $("panel");
  if (panel.hidden) return;
  panel.hidden = true;
  document.body.classList.remove("panel-open");
  if (state.panelTrigger && document.contains(state.panelTrigger)) state.panelTrigger.focus();
  state.panelTrigger = null;
}

// ---------------------------------------------------------------- layout, language and keys

function openSidebar() {
  document.body.classList.add("sidebar-open");
  $("menu").setAttribute("aria-expanded", "true");
  $("backdrop").hidden = false;
  $("conv-search").focus();
}

function closeSidebar() {
  if (!document.body.classList.contains("sidebar-open")) return;
  document.body.classList.remove("sidebar-open");
  $("menu").setAttribute("aria-expanded", "false");
  $("backdrop").hidden = true;
}

function switchLanguage(lang) {
  setLanguage(lang);
  hideToast(); // said in the language before
  $("lang").value = language();
  showWho();
  if (state.me) {
    loadModels();
    if ($("conv-search").value.trim()) searchSessions();
    else renderSessionList();
    updateFilterCount();
    retranslateTurns();
  }
}

/** Strings drawn into the answers with values in them (citation labels, scores): drawn again in the new language. */
function retranslateTurns() {
  for (const article of $("log").querySelectorAll("article.turn")) {
    const data = turnData.get(article);
    if (!article.querySelector(".a[data-done='true']")) continue; // a running answer redraws itself
    renderAnswer(article, data.text);
    showSources(article, data.sources);
  }
}

function onKey(event) {
  if (event.key !== "Escape" || document.querySelector("dialog[open]")) return;
  if (!$("panel").hidden) {
    event.preventDefault();
    closePanel();
  } else if (document.body.classList.contains("sidebar-open")) {
    event.preventDefault();
    closeSidebar();
    $("menu").focus();
  }
}

function wire() {
  const lang = $("lang");
  for (const [code, name] of Object.entries(LANGUAGES)) lang.append(el("option", { value: code, textContent: name }));
  lang.value = language();
  lang.addEventListener("change", () => switchLanguage(lang.value));
  $("signin").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("ask").addEventListener("submit", ask);
  $("stop").addEventListener("click", stopAnswer);
  $("new-chat").addEventListener("click", newChat);
  $("model").addEventListener("change", () => localStorage.setItem(MODEL, $("model").value));
  $("add-filter").addEventListener("click", () => addFilterRow());
  $("panel-close").addEventListener("click", closePanel);
  $("menu").addEventListener("click", () => (document.body.classList.contains("sidebar-open") ? closeSidebar() : openSidebar()));
  $("backdrop").addEventListener("click", closeSidebar);
  NARROW.addEventListener("change", () => closeSidebar());
  $("conv-search").addEventListener("input", () => {
    clearTimeout(state.searchTimer);
    state.searchTimer = setTimeout(searchSessions, 250);
  });
  const question = $("question");
  question.addEventListener("input", autoGrow);
  question.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter is a new line; never while an input method is composing (Chinese, Japanese…).
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("ask").requestSubmit();
    }
  });
  $("log").addEventListener("click", (event) => {
    const cite = event.target.closest("button.cite");
    if (!cite) return;
    const article = cite.closest("article.turn");
    const source = turnData.get(article).sources.find((s) => s.n === Number(cite.dataset.n));
    if (source) openSource(source, cite);
  });
  document.addEventListener("keydown", onKey);
}

setLanguage(initialLanguage());
placeIcons();
wire();
checkSignIn();
