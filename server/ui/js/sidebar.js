// The conversation sidebar: the app's conversations from /v1/conversations (newest first, "Show more" pages
// on), and for each: open, rename (inline), delete (with an inline confirmation).

import { icon } from "./icons.js";
import { announce, reportError } from "./notices.js";

const DATE = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

function when(seconds) {
  const date = new Date(seconds * 1000);
  return date.toDateString() === new Date().toDateString() ? TIME.format(date) : DATE.format(date);
}

export class Sidebar {
  /**
   * @param options.onOpen(conversation) the person chose a conversation
   * @param options.onNew() the person asked for a new one
   * @param options.onRenamed(id, title), options.onDeleted(id)
   */
  constructor(api, { onOpen, onNew, onRenamed, onDeleted }) {
    this.api = api;
    this.onOpen = onOpen;
    this.onRenamed = onRenamed;
    this.onDeleted = onDeleted;
    this.conversations = [];
    this.hasMore = false;
    this.currentId = null;
    this.list = document.getElementById("conversation-list");
    this.empty = document.getElementById("conversations-empty");
    this.more = document.getElementById("conversations-more");
    document.getElementById("new-chat").addEventListener("click", () => onNew());
    this.more.addEventListener("click", () => this.load({ more: true }));
  }

  async load({ more = false } = {}) {
    const after = more && this.conversations.length ? this.conversations.at(-1).id : undefined;
    if (!more) this.list.setAttribute("aria-busy", "true");
    try {
      const page = await this.api.conversations({ after });
      this.conversations = more ? [...this.conversations, ...page.data] : page.data;
      this.hasMore = page.has_more;
      this.render();
    } catch (error) {
      reportError(error, "load");
      if (error.status === 429 && error.retryAfter) setTimeout(() => this.load(), error.retryAfter * 1000 + 250);
      if (!more) {
        this.conversations = [];
        this.render("The conversations could not be loaded.");
      }
    } finally {
      this.list.setAttribute("aria-busy", "false");
    }
  }

  find(id) {
    return this.conversations.find((c) => c.id === id);
  }

  setCurrent(id) {
    this.currentId = id;
    for (const item of this.list.children) {
      const open = item.querySelector(".conversation-open");
      if (!open) continue;
      if (item.dataset.id === id) open.setAttribute("aria-current", "true");
      else open.removeAttribute("aria-current");
    }
  }

  render(emptyText = "No conversations yet. Your chats appear here.") {
    this.list.replaceChildren(...this.conversations.map((c) => this.item(c)));
    this.empty.hidden = this.conversations.length > 0;
    this.empty.textContent = emptyText;
    this.more.hidden = !this.hasMore;
    this.setCurrent(this.currentId);
  }

  item(conversation) {
    const li = document.createElement("li");
    li.className = "conversation";
    li.dataset.id = conversation.id;
    const title = conversation.title || "Untitled conversation";

    const open = document.createElement("button");
    open.type = "button";
    open.className = "conversation-open";
    const name = document.createElement("span");
    name.className = "conversation-title";
    name.textContent = title;
    const time = document.createElement("time");
    time.dateTime = new Date(conversation.updated_at * 1000).toISOString();
    time.textContent = when(conversation.updated_at);
    open.append(name, time);
    open.addEventListener("click", () => this.onOpen(conversation));

    const rename = actionButton("pencil", `Rename “${title}”`, () => this.startRename(li, conversation));
    const remove = actionButton("trash", `Delete “${title}”`, () => this.confirmDelete(li, conversation));
    const actions = document.createElement("div");
    actions.className = "conversation-actions";
    actions.append(rename, remove);
    li.append(open, actions);
    return li;
  }

  startRename(li, conversation) {
    const form = document.createElement("form");
    form.className = "conversation-rename";
    const id = `rename-${conversation.id}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.className = "visually-hidden";
    label.textContent = "New title";
    const input = document.createElement("input");
    input.id = id;
    input.value = conversation.title || "";
    input.maxLength = 256;
    input.required = true;
    const save = document.createElement("button");
    save.type = "submit";
    save.className = "small-button primary";
    save.textContent = "Save";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "small-button";
    cancel.textContent = "Cancel";
    form.append(label, input, save, cancel);
    const restore = () => {
      const fresh = this.item(conversation);
      li.replaceWith(fresh);
      this.setCurrent(this.currentId);
      fresh.querySelector(".conversation-actions button").focus();
    };
    cancel.addEventListener("click", restore);
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        restore();
      }
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const title = input.value.trim();
      if (!title) return;
      save.disabled = true;
      try {
        const updated = await this.api.renameConversation(conversation.id, title);
        Object.assign(conversation, updated);
        this.onRenamed(conversation.id, updated.title);
        announce(`Renamed to “${updated.title}”.`);
        restore();
      } catch (error) {
        save.disabled = false;
        reportError(error, "rename");
      }
    });
    li.replaceChildren(form);
    input.focus();
    input.select();
  }

  confirmDelete(li, conversation) {
    const box = document.createElement("div");
    box.className = "conversation-confirm";
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "Confirm deletion");
    const question = document.createElement("p");
    question.textContent = `Delete “${conversation.title || "Untitled conversation"}”? This cannot be undone.`;
    const yes = document.createElement("button");
    yes.type = "button";
    yes.className = "small-button danger";
    yes.textContent = "Delete";
    const no = document.createElement("button");
    no.type = "button";
    no.className = "small-button";
    no.textContent = "Cancel";
    const restore = () => {
      const fresh = this.item(conversation);
      li.replaceWith(fresh);
      this.setCurrent(this.currentId);
      fresh.querySelectorAll(".conversation-actions button")[1].focus();
    };
    no.addEventListener("click", restore);
    box.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        restore();
      }
    });
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      try {
        await this.api.deleteConversation(conversation.id);
      } catch (error) {
        if (error.status !== 404) {
          yes.disabled = false;
          reportError(error, "delete");
          return;
        }
      }
      const index = this.conversations.indexOf(conversation);
      this.conversations = this.conversations.filter((c) => c !== conversation);
      this.render();
      announce("Conversation deleted.");
      this.onDeleted(conversation.id);
      // Keep the focus in the list: on the next conversation, or on "New chat" when none is left.
      const next = this.list.children[Math.min(index, this.list.children.length - 1)];
      (next ? next.querySelector(".conversation-open") : document.getElementById("new-chat")).focus();
    });
    const row = document.createElement("div");
    row.className = "row";
    row.append(yes, no);
    box.append(question, row);
    li.replaceChildren(box);
    no.focus();
  }
}

function actionButton(iconName, label, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "icon-button";
  button.setAttribute("aria-label", label);
  button.title = label;
  button.innerHTML = icon(iconName);
  button.addEventListener("click", onClick);
  return button;
}
