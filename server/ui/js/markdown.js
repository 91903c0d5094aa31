// Answers as Markdown: parsed by marked, sanitised by DOMPurify, code highlighted by highlight.js, and a copy
// button on every code block. The libraries are vendored files (server/ui/vendor/, see vendor.json).

import { Marked } from "../vendor/marked-18.2.1/marked.esm.js";
import DOMPurify from "../vendor/dompurify-3.5.0/purify.es.mjs";
import hljs from "../vendor/highlightjs-cdn-assets-11.12.0/highlight.min.js";
import { announce } from "./notices.js";

const marked = new Marked({ gfm: true, breaks: true, async: false });
hljs.configure({ ignoreUnescapedHTML: true });

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

const PURIFY = {
  USE_PROFILES: { html: true },
  // Images in an answer would come from wherever a model points (the CSP blocks other origins anyway).
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "img"],
  FORBID_ATTR: ["style"], // the page's CSP refuses inline styles anyway
};

/** Safe HTML for `text` (Markdown written by a model: never trusted). */
export function markdownToHtml(text) {
  return DOMPurify.sanitize(marked.parse(text || ""), PURIFY);
}

/** Render `text` into `element`: Markdown, highlighted code, copy buttons. */
export function renderMarkdown(element, text) {
  element.innerHTML = markdownToHtml(text);
  for (const code of element.querySelectorAll("pre > code")) {
    const language = [...code.classList].find((c) => c.startsWith("language-"));
    if (language && !hljs.getLanguage(language.slice(9))) code.classList.remove(language);
    hljs.highlightElement(code);
    addCopyButton(code.parentElement, language ? language.slice(9) : "");
  }
  for (const table of element.querySelectorAll("table")) {
    const scroller = document.createElement("div");
    scroller.className = "table-scroll";
    scroller.tabIndex = 0;
    scroller.setAttribute("role", "region");
    scroller.setAttribute("aria-label", "Table");
    table.replaceWith(scroller);
    scroller.append(table);
  }
}

function addCopyButton(pre, language) {
  const block = document.createElement("div");
  block.className = "code-block";
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const label = document.createElement("span");
  label.textContent = language || "code";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy-code small-button";
  const idle = () => {
    button.textContent = "Copy";
    const what = document.createElement("span");
    what.className = "visually-hidden";
    what.textContent = language ? ` ${language} code` : " code";
    button.append(what);
  };
  idle();
  button.addEventListener("click", async () => {
    const ok = await copyText(pre.innerText);
    button.textContent = ok ? "Copied" : "Copy failed";
    announce(ok ? "Code copied to the clipboard." : "The code could not be copied: select it and copy it by hand.");
    setTimeout(idle, 2000);
  });
  bar.append(label, button);
  pre.replaceWith(block);
  pre.tabIndex = 0; // a long line scrolls sideways: let a keyboard reach it
  block.append(bar, pre);
}

/** Copy to the clipboard; the old way where the Clipboard API is missing (a page not on https or localhost). */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.append(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    area.remove();
    return ok;
  }
}
