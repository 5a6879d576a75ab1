// Line icons as inline SVG (drawn for this page): they render the same everywhere, unlike emoji, which need a font
// that a server or a minimal desktop may lack. Each is decorative (aria-hidden); its button carries the label.

const PATHS = {
  plus: "M12 5v14M5 12h14",
  pencil: "M4 20h4L19 9l-4-4L4 16v4zM13.5 6.5l4 4",
  trash: "M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13M10 11v6M14 11v6",
  up: "M7 11v9H4v-9h3zm0 0 4-7c1.5 0 2.5 1 2.5 2.5L13 10h5.6c1.2 0 2.1 1.1 1.8 2.3l-1.3 6.2c-.2 .9-1 1.5-1.9 1.5H7",
  copy: "M9 9h11v11H9zM5 15H4V4h11v1",
  menu: "M4 6h16M4 12h16M4 18h16",
  close: "M6 6l12 12M18 6 6 18",
  stop: "M7 7h10v10H7z",
};

/** An <svg> icon; `down` is the thumb up turned over. */
export function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "16");
  svg.setAttribute("height", "16");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  svg.classList.add("svg-icon");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", PATHS[name === "down" ? "up" : name] || "");
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", "currentColor");
  path.setAttribute("stroke-width", "1.8");
  path.setAttribute("stroke-linecap", "round");
  path.setAttribute("stroke-linejoin", "round");
  if (name === "down") path.setAttribute("transform", "rotate(180 12 12)");
  svg.append(path);
  return svg;
}

/** Put the icon named by data-icon at the start of every such element under `root`. */
export function placeIcons(root = document) {
  for (const node of root.querySelectorAll("[data-icon]")) {
    if (!node.querySelector(":scope > svg.svg-icon")) node.prepend(icon(node.dataset.icon));
  }
}
