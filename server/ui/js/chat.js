// The conversation pane: messages (answers as Markdown, with their sources and ratings), the composer, and the
// streamed answer of /v1/chat/completions (stream: true, conversation_id), which the stop button aborts.

import { renderMarkdown } from "./markdown.js";
import { announce, clearErrors, reportError, showError } from "./notices.js";
import { humanMessage } from "./errors.js";
import { icon } from "./icons.js";

const SUGGESTIONS = ["What is the capital of France?", "Who wrote Romeo and Juliet?", "Name three primary colors."];

export class ChatView {
  /**
   * @param api the Api
   * @param options.onConversation(id) a new conversation got its id, or a turn was added to one
   * @param options.request() the model and the vector stores the person picked: {model, vector_store_ids?}
   */
  constructor(api, { onConversation, request }) {
    this.api = api;
    this.onConversation = onConversation;
    this.pickedOptions = request;
    this.conversationId = null;
    this.controller = null;
    this.loadToken = 0;
    this.log = document.getElementById("messages");
    this.form = document.getElementById("composer");
    this.input = document.getElementById("composer-input");
    this.sendButton = document.getElementById("send");
    this.stopButton = document.getElementById("stop");
    this.title = document.getElementById("conversation-title");

    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      } else if (event.key === "Escape" && this.controller) {
        event.preventDefault();
        this.stop();
      }
    });
    this.input.addEventListener("input", () => this.autosize());
    this.stopButton.addEventListener("click", () => this.stop());
    this.showEmpty();
  }

  get streaming() {
    return this.controller !== null;
  }

  autosize() {
    this.input.style.height = "auto";
    this.input.style.height = `${Math.min(this.input.scrollHeight + 2, window.innerHeight * 0.4)}px`;
  }

  // ------------------------------------------------------------------ switching conversations

  /** An empty pane for a new conversation (the first message creates it on the server). */
  startNew() {
    this.stop();
    this.loadToken += 1;
    this.conversationId = null;
    this.title.textContent = "New conversation";
    this.showEmpty();
  }

  async open(conversation) {
    this.stop();
    const token = ++this.loadToken;
    this.conversationId = conversation.id;
    this.title.textContent = conversation.title || "Untitled conversation";
    this.log.replaceChildren(loading("Loading the conversation…"));
    this.log.setAttribute("aria-busy", "true");
    try {
      const full = await this.api.conversation(conversation.id);
      if (token !== this.loadToken) return;
      this.title.textContent = full.title || "Untitled conversation";
      this.log.replaceChildren();
      for (const message of full.messages) {
        if (message.role === "user") this.log.append(userMessage(message.content));
        else if (message.role === "assistant" && (message.content || !message.tool_calls)) {
          const answer = this.assistantMessage();
          this.finishAnswer(answer, {
            text: message.content,
            responseId: message.response_id,
            citations: message.citations,
            finishReason: message.finish_reason,
          });
        }
      }
      if (!full.messages.length) this.showEmpty();
      this.scrollToEnd(true);
    } catch (error) {
      if (token !== this.loadToken) return;
      this.log.replaceChildren(emptyState("This conversation could not be loaded.", humanMessage(error, "load")));
      reportError(error, "load");
    } finally {
      if (token === this.loadToken) this.log.setAttribute("aria-busy", "false");
    }
  }

  renamed(title) {
    this.title.textContent = title || "Untitled conversation";
  }

  showEmpty() {
    const state = emptyState(
      "Start a conversation",
      "Ask a question below. Answers stream in as they are written; Markdown and code are formatted.",
    );
    const list = document.createElement("div");
    list.className = "suggestions";
    list.setAttribute("role", "group");
    list.setAttribute("aria-label", "Example questions");
    for (const text of SUGGESTIONS) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "suggestion";
      button.textContent = text;
      button.addEventListener("click", () => {
        this.input.value = text;
        this.send();
      });
      list.append(button);
    }
    state.append(list);
    this.log.replaceChildren(state);
  }

  // ------------------------------------------------------------------ sending and streaming

  stop() {
    if (this.controller) this.controller.abort();
  }

  setStreaming(on) {
    this.sendButton.hidden = on;
    this.stopButton.hidden = !on;
    this.log.setAttribute("aria-busy", on ? "true" : "false");
    // The button under the focus is swapped: keep the focus on its replacement.
    const active = document.activeElement;
    if (on && active === this.sendButton) this.stopButton.focus();
    if (!on && active === this.stopButton) this.input.focus();
  }

  async send() {
    const text = this.input.value.trim();
    if (!text || this.streaming) return;
    const controller = new AbortController();
    this.controller = controller; // from here on a second Enter sends nothing
    const options = await this.pickedOptions(); // waits for the model list when the page has just opened
    if (!options.model) {
      this.controller = null;
      showError("There is no model to answer: the list of models could not be loaded. Reload the page in a moment.");
      return;
    }
    this.input.value = "";
    this.autosize();
    this.loadToken += 1; // a conversation still loading must not replace this turn
    clearErrors((alert) => alert.dataset.key.startsWith("chat:") || alert.dataset.key === "rate-limit");
    this.log.querySelector(".empty-state")?.remove();
    this.log.append(userMessage(text));
    const answer = this.assistantMessage({ pending: true });
    this.scrollToEnd(true);
    this.setStreaming(true);
    const request = {
      ...options,
      messages: [{ role: "user", content: text }],
      conversation_id: this.conversationId || "new",
    };
    const result = { text: "", responseId: null, citations: null, finishReason: null };
    let frame = 0;
    const paint = () => {
      frame = 0;
      const stick = this.nearEnd();
      renderMarkdown(answer.content, result.text);
      if (stick) this.scrollToEnd();
    };
    const startedIn = this.conversationId;
    let created = null; // the id of the conversation this turn starts, once the stream names it
    try {
      for await (const chunk of this.api.streamChat(request, controller.signal)) {
        result.responseId = chunk.id || result.responseId;
        if (chunk.conversation_id && chunk.conversation_id !== this.conversationId && startedIn === null) {
          this.conversationId = created = chunk.conversation_id;
          this.onConversation(chunk.conversation_id, { started: true, title: text });
        }
        if (chunk.citations) result.citations = chunk.citations;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) {
          if (!result.text) answer.element.classList.remove("pending");
          result.text += choice.delta.content;
          if (!frame) frame = requestAnimationFrame(paint);
        }
        if (choice.finish_reason) result.finishReason = choice.finish_reason;
      }
      if (frame) cancelAnimationFrame(frame);
      this.finishAnswer(answer, result);
      announce("The answer is complete.");
      if (this.conversationId) this.onConversation(this.conversationId, {});
    } catch (error) {
      if (frame) cancelAnimationFrame(frame);
      const stopped = error && error.name === "AbortError";
      this.finishAnswer(answer, {
        ...result,
        responseId: null, // not saved: there is nothing to rate
        note: stopped
          ? "Stopped. This answer was not saved in the conversation."
          : "The answer could not be completed.",
        failed: !stopped,
      });
      if (stopped) announce("Stopped.");
      else reportError(error, "chat");
      if (created && this.conversationId === created) {
        this.conversationId = null; // the first turn was not stored: the next message starts the conversation
        this.onConversation(null, { dropped: true });
      }
      if (!result.text && !stopped && !this.input.value) {
        this.input.value = text; // nothing was answered: let the person send it again as it was
        this.autosize();
      }
    } finally {
      if (this.controller === controller) {
        this.controller = null;
        this.setStreaming(false);
      }
      this.scrollToEnd();
    }
  }

  // ------------------------------------------------------------------ messages

  assistantMessage({ pending = false } = {}) {
    const element = document.createElement("article");
    element.className = "message assistant";
    element.setAttribute("aria-label", "Answer");
    if (pending) element.classList.add("pending", "streaming");
    const content = document.createElement("div");
    content.className = "content markdown";
    const typing = document.createElement("p");
    typing.className = "typing";
    typing.innerHTML = '<span class="dots" aria-hidden="true"><i></i><i></i><i></i></span>';
    const words = document.createElement("span");
    words.textContent = "Writing the answer…";
    typing.append(words);
    element.append(content, typing);
    this.log.append(element);
    return { element, content };
  }

  finishAnswer(answer, { text, responseId, citations, finishReason, note, failed }) {
    const { element, content } = answer;
    element.classList.remove("pending", "streaming");
    element.querySelector(".typing")?.remove();
    if (text) renderMarkdown(content, text);
    else if (!note) content.innerHTML = '<p class="muted">(no text in this answer)</p>';
    else content.replaceChildren();
    if (responseId) element.dataset.responseId = responseId;
    const notes = [];
    if (finishReason === "length") notes.push("The answer was cut off at the model's length limit.");
    if (finishReason === "content_filter") notes.push("The rest of this answer was withheld by the content filter.");
    if (note) notes.push(note);
    for (const line of notes) {
      const p = document.createElement("p");
      p.className = failed ? "answer-note failed" : "answer-note";
      p.textContent = line;
      element.append(p);
    }
    if (citations && citations.length) element.append(citationList(citations));
    if (responseId) element.append(this.feedbackControls(responseId));
  }

  feedbackControls(responseId) {
    const box = document.createElement("div");
    box.className = "feedback";
    const group = document.createElement("div");
    group.className = "thumbs";
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", "Rate this answer");
    const up = thumb("up", "Good answer");
    const down = thumb("down", "Bad answer");
    group.append(up, down);

    const form = document.createElement("form");
    form.className = "feedback-comment";
    form.hidden = true;
    const id = `comment-${responseId.replace(/[^\w-]/g, "_")}`;
    form.innerHTML = `
      <label for="${id}">What was good or wrong about it? (optional)</label>
      <textarea id="${id}" rows="2" maxlength="10000"></textarea>
      <div class="row"><button type="submit" class="small-button primary">Send comment</button>
      <button type="button" class="small-button close-comment">Close</button></div>`;
    const saved = document.createElement("span");
    saved.className = "feedback-saved muted";
    let score = null;
    let sentComment = null; // a new thumb keeps the comment already given: a rating replaces the one before

    const rate = async (value, comment = sentComment) => {
      const previous = sentComment;
      try {
        await this.api.rate(responseId, value, comment);
        score = value;
        sentComment = comment;
        up.setAttribute("aria-pressed", String(value === 1));
        down.setAttribute("aria-pressed", String(value === -1));
        saved.textContent = comment && comment !== previous ? "Thanks, your comment was saved." : "Rating saved.";
        announce(saved.textContent);
        return true;
      } catch (error) {
        reportError(error, "rating");
        return false;
      }
    };
    for (const [button, value] of [
      [up, 1],
      [down, -1],
    ]) {
      button.addEventListener("click", async () => {
        if (await rate(value)) form.hidden = false;
      });
    }
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const comment = form.querySelector("textarea").value.trim();
      if (score !== null && comment && (await rate(score, comment))) form.hidden = true;
    });
    form.querySelector(".close-comment").addEventListener("click", () => {
      form.hidden = true;
      (score === 1 ? up : down).focus();
    });
    group.append(saved);
    box.append(group, form);
    return box;
  }

  nearEnd() {
    const log = this.log;
    return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  }

  scrollToEnd(force = false) {
    if (force || this.nearEnd()) this.log.scrollTop = this.log.scrollHeight;
  }
}

function thumb(direction, label) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `thumb thumb-${direction} icon-button`;
  button.setAttribute("aria-pressed", "false");
  button.setAttribute("aria-label", label);
  button.title = label;
  button.innerHTML = icon(direction === "up" ? "thumbUp" : "thumbDown");
  return button;
}

function userMessage(text) {
  const element = document.createElement("article");
  element.className = "message user";
  element.setAttribute("aria-label", "You said");
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text;
  element.append(content);
  return element;
}

/** "Sources": each citation's file and chunk, its quoted text behind a disclosure. */
function citationList(citations) {
  const section = document.createElement("section");
  section.className = "citations";
  const heading = document.createElement("h3");
  heading.textContent = citations.length === 1 ? "Source" : `Sources (${citations.length})`;
  const list = document.createElement("ol");
  citations.forEach((citation, index) => {
    const item = document.createElement("li");
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    const number = document.createElement("span");
    number.className = "citation-number";
    number.textContent = `[${index + 1}]`;
    const name = document.createElement("span");
    name.className = "citation-file";
    name.textContent = citation.filename || citation.file_id;
    const where = document.createElement("span");
    where.className = "citation-chunk muted";
    where.textContent = `chunk ${citation.chunk}`;
    summary.append(number, " ", name, " ", where);
    const quote = document.createElement("blockquote");
    quote.textContent = citation.quote || "";
    const score = document.createElement("p");
    score.className = "muted citation-score";
    if (typeof citation.score === "number") score.textContent = `Relevance ${Math.round(citation.score * 100)}%`;
    details.append(summary, quote, score);
    item.append(details);
    list.append(item);
  });
  section.append(heading, list);
  return section;
}

export function emptyState(title, text) {
  const state = document.createElement("div");
  state.className = "empty-state";
  const heading = document.createElement("h2");
  heading.textContent = title;
  const p = document.createElement("p");
  p.textContent = text;
  state.append(heading, p);
  return state;
}

export function loading(text) {
  const p = document.createElement("p");
  p.className = "loading";
  p.innerHTML = '<span class="spinner" aria-hidden="true"></span>';
  p.append(text);
  return p;
}
