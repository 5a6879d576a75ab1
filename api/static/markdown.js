// Answers as Markdown: parsed by marked, sanitised by DOMPurify before anything reaches the DOM (an answer quotes
// documents and model output, either of which may hold HTML), then decorated: a copy button on every code block and
// each citation marker [n] outside code turned into a button that opens source n.

import { marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";

// breaks: the model ends lines with a single newline and means it.
marked.setOptions({ gfm: true, breaks: true });

const CITATION = /\[(\d{1,3})\]/g;
const HAS_CITATION = /\[\d{1,3}\]/; // no /g: test() on a global regex keeps state between calls
const NO_CITATIONS_INSIDE = "code, pre, a, button, kbd, samp";

/** Render `text` into `container`; `decorate` gives the labels and the click handlers of the added buttons. */
export function renderMarkdown(container, text, decorate) {
  const html = DOMPurify.sanitize(marked.parse(text || ""), { USE_PROFILES: { html: true }, FORBID_TAGS: ["style", "form"] });
  container.innerHTML = html; // sanitised above
  for (const a of container.querySelectorAll("a[href]")) {
    a.target = "_blank";
    a.rel = "noopener noreferrer";
  }
  addCodeCopyButtons(container, decorate);
  linkCitations(container, decorate);
}

function addCodeCopyButtons(container, decorate) {
  for (const pre of container.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const box = document.createElement("div");
    box.className = "code";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const lang = ((code && code.className) || "").match(/language-([\w+#.-]+)/);
    const label = document.createElement("span");
    label.textContent = lang ? lang[1] : "";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-code";
    button.dataset.i18n = "code.copy";
    button.textContent = decorate.label("code.copy");
    button.addEventListener("click", () => decorate.copy((code || pre).textContent, button));
    bar.append(label, button);
    pre.replaceWith(box);
    box.append(bar, pre);
  }
}

function linkCitations(container, decorate) {
  const walker = document.createTreeWalker(container, NodeFilter.SHOW_TEXT, {
    acceptNode: (node) =>
      node.parentElement.closest(NO_CITATIONS_INSIDE) || !HAS_CITATION.test(node.nodeValue)
        ? NodeFilter.FILTER_REJECT
        : NodeFilter.FILTER_ACCEPT,
  });
  const nodes = [];
  while (walker.nextNode()) nodes.push(walker.currentNode);
  for (const node of nodes) {
    const parts = document.createDocumentFragment();
    let last = 0;
    for (const match of node.nodeValue.matchAll(CITATION)) {
      parts.append(node.nodeValue.slice(last, match.index));
      parts.append(decorate.citation(Number(match[1])));
      last = match.index + match[0].length;
    }
    parts.append(node.nodeValue.slice(last));
    node.replaceWith(parts);
  }
}

/** A search snippet from PostgreSQL's ts_headline, whose only markup is <b>…</b>, as DOM nodes (never as HTML). */
export function snippetNodes(snippet) {
  const out = document.createDocumentFragment();
  const pieces = String(snippet).split(/(<b>|<\/b>)/);
  let bold = false;
  for (const piece of pieces) {
    if (piece === "<b>") bold = true;
    else if (piece === "</b>") bold = false;
    else if (piece) {
      const node = bold ? document.createElement("mark") : document.createTextNode(piece);
      if (bold) node.textContent = piece;
      out.append(node);
    }
  }
  return out;
}
