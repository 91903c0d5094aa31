// The page's two live regions: #alerts (errors, announced at once, kept until dismissed or replaced) and
// #status (short confirmations such as "Copied", announced politely and cleared after a few seconds).

import { humanMessage } from "./errors.js";

const MAX_ALERTS = 3;
let statusTimer = 0;

/** Show an error sentence; `key` replaces an earlier alert of the same kind instead of stacking it. */
export function showError(text, key = text) {
  const region = document.getElementById("alerts");
  for (const old of region.querySelectorAll(".alert")) {
    if (old.dataset.key === key) old.remove();
  }
  const alert = document.createElement("div");
  alert.className = "alert";
  alert.dataset.key = key;
  const message = document.createElement("p");
  message.textContent = text;
  const dismiss = document.createElement("button");
  dismiss.type = "button";
  dismiss.className = "alert-dismiss";
  dismiss.setAttribute("aria-label", "Dismiss this message");
  dismiss.textContent = "×";
  dismiss.addEventListener("click", () => alert.remove());
  alert.append(message, dismiss);
  region.append(alert);
  while (region.children.length > MAX_ALERTS) region.firstElementChild.remove();
  return alert;
}

/** Show what went wrong with `action` (see errors.js); AbortErrors (the person stopped it) are not errors. */
export function reportError(error, action) {
  if (error && error.name === "AbortError") return null;
  if (!(error && "status" in error)) console.error(error);
  const key = error && error.status === 429 ? "rate-limit" : `${action}:${error && error.status}`;
  return showError(humanMessage(error, action), key);
}

export function clearErrors(filter = () => true) {
  for (const alert of document.querySelectorAll("#alerts .alert")) {
    if (filter(alert)) alert.remove();
  }
}

export function announce(text) {
  const region = document.getElementById("status");
  region.textContent = text;
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => {
    region.textContent = "";
  }, 4000);
}
