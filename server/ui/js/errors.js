// What a person reads when something goes wrong: every error the API can give, in plain words, with what to do.

/** "in 1 second", "in 42 seconds", "in 2 minutes" */
export function waitText(seconds) {
  if (seconds >= 120) return `in ${Math.ceil(seconds / 60)} minutes`;
  return seconds === 1 ? "in 1 second" : `in ${seconds} seconds`;
}

/** The server's own words, as ": ..." (its messages are written for people), or "" when it gave none. */
function detail(error) {
  const message = (error.message || "").trim();
  return message && !/^HTTP \d+$/.test(message) ? `: ${message.replace(/\.$/, "")}` : "";
}

/**
 * The sentence for `error` (an ApiError, a NetworkError, or anything thrown) met while doing `action`:
 * "chat", "upload", "image", "rating", "rename", "delete", "load", "store".
 */
export function humanMessage(error, action = "load") {
  const status = error && typeof error.status === "number" ? error.status : -1;
  const code = error && error.code;
  if (status === 0) {
    return "The platform cannot be reached. Check that the server is running and your network connection, then try again.";
  }
  if (status === 401) {
    return "Your API key was not accepted: it may be mistyped, revoked or expired. Enter a valid app key.";
  }
  if (status === 403) {
    return "This key is not allowed to do that. The web chat needs an app's API key, not an admin key.";
  }
  if (status === 429 && code === "insufficient_quota") {
    return `This app's monthly budget is spent${detail(error)}.`;
  }
  if (status === 429) {
    const when = error.retryAfter ? waitText(error.retryAfter) : "in a moment";
    return `Too many requests: this key's rate limit is reached. Try again ${when}.`;
  }
  if (code === "server_shutting_down") {
    return "The server is restarting. Send your message again in a moment.";
  }
  if (status === 502) {
    return "The model server answered with an error. Try again in a moment; if it keeps failing, tell the platform team.";
  }
  if (status === 503) {
    const when = error.retryAfter ? ` Try again ${waitText(error.retryAfter)}.` : " Try again in a moment.";
    if (action === "image") return `Image generation is not available right now${detail(error)}.${when}`;
    if (action === "upload" || action === "store") return `The knowledge base is not available right now.${when}`;
    return `The model is not available right now (down or overloaded).${when}`;
  }
  if (status === 504) {
    return "The model did not answer in time. Try again, or ask something shorter.";
  }
  if (status === 413) {
    return action === "upload"
      ? `The file is too large${detail(error)}. Split it into smaller files.`
      : "The request is too large. Shorten your message.";
  }
  if (code === "content_policy_violation") {
    return action === "image"
      ? `This image prompt was blocked by the content policy${detail(error)}. Describe something else.`
      : `Your message was blocked by the safety check${detail(error)}. Rephrase it and try again.`;
  }
  if (code === "context_length_exceeded") {
    return "This is too long for the model. Shorten your message or start a new conversation.";
  }
  if (code === "model_not_found") {
    return "That model is not available to this app. Pick another model.";
  }
  if (status === 400 && action === "upload") {
    const why = detail(error);
    return why
      ? `The file was rejected${why}.`
      : "The file was rejected. Upload text (.txt), Markdown (.md), HTML or PDF files.";
  }
  if (status === 404) {
    const what = { rename: "conversation", delete: "conversation", rating: "answer" }[action] || "item";
    return `This ${what} no longer exists (it may have been deleted elsewhere).`;
  }
  if (status >= 400 && status < 500) {
    return `The request was refused${detail(error)}.`;
  }
  if (status >= 500) {
    return `The server failed to handle this${detail(error)}. Try again; if it keeps failing, tell the platform team.`;
  }
  return `Something went wrong${detail(error)}.`;
}
