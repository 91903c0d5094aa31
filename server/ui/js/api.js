// The platform's HTTP API as the page uses it: the person's key on every request, errors as ApiError (with what
// a person should read: see errors.js), and the chat stream's server-sent events parsed into chunks.

const KEY_STORAGE = "genai.apiKey";
const PLAYGROUND_COOKIE = "genai_api_key";

export class ApiError extends Error {
  constructor(status, body = {}, headers = null) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = error.code || null;
    this.type = error.type || null;
    this.param = error.param || null;
    const retryAfter = headers ? Number.parseFloat(headers.get("retry-after")) : NaN;
    this.retryAfter = Number.isFinite(retryAfter) ? Math.max(1, Math.ceil(retryAfter)) : null;
  }

  static async from(response) {
    let body = {};
    try {
      body = await response.json();
    } catch {
      body = { error: { message: response.statusText || `HTTP ${response.status}` } };
    }
    return new ApiError(response.status, body, response.headers);
  }
}

/** A request that never reached the server (offline, server stopped): status 0. */
export class NetworkError extends ApiError {
  constructor(cause) {
    super(0, { error: { message: String(cause && cause.message ? cause.message : cause) } });
    this.name = "NetworkError";
  }
}

export const keyStore = {
  get() {
    try {
      return localStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return "";
    }
  },
  set(key) {
    localStorage.setItem(KEY_STORAGE, key);
  },
  forget() {
    localStorage.removeItem(KEY_STORAGE);
    document.cookie = `${PLAYGROUND_COOKIE}=; path=/; max-age=0; SameSite=Strict`;
  },
  /** The LangServe playground cannot send a header: it reads the key from a cookie (see the README). */
  shareWithPlayground(key) {
    const secure = location.protocol === "https:" ? "; Secure" : "";
    document.cookie = `${PLAYGROUND_COOKIE}=${encodeURIComponent(key)}; path=/; SameSite=Strict${secure}`;
  },
};

export class Api {
  constructor({ key = keyStore.get(), onUnauthorized = () => {}, onAnswered = () => {} } = {}) {
    this.key = key;
    this.onUnauthorized = onUnauthorized;
    this.onAnswered = onAnswered; // a request succeeded: a rate limit met before is over
  }

  /** fetch() with the key; a non-2xx answer throws ApiError, an unreachable server NetworkError. */
  async request(path, { method = "GET", json, form, signal, key = this.key, quiet401 = false } = {}) {
    const headers = { Authorization: `Bearer ${key}` };
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body, signal, cache: "no-store" });
    } catch (cause) {
      if (cause && cause.name === "AbortError") throw cause;
      throw new NetworkError(cause);
    }
    if (!response.ok) {
      const error = await ApiError.from(response);
      if (error.status === 401 && !quiet401) this.onUnauthorized(error);
      throw error;
    }
    this.onAnswered(response);
    return response;
  }

  async json(path, options) {
    return (await this.request(path, options)).json();
  }

  // ------------------------------------------------------------------ resources

  models(key) {
    return this.json("/v1/models", key ? { key, quiet401: true } : undefined);
  }

  conversations({ after } = {}) {
    const query = new URLSearchParams({ limit: "50" });
    if (after) query.set("after", after);
    return this.json(`/v1/conversations?${query}`);
  }

  conversation(id) {
    return this.json(`/v1/conversations/${encodeURIComponent(id)}`);
  }

  renameConversation(id, title) {
    return this.json(`/v1/conversations/${encodeURIComponent(id)}`, { method: "POST", json: { title } });
  }

  deleteConversation(id) {
    return this.json(`/v1/conversations/${encodeURIComponent(id)}`, { method: "DELETE" });
  }

  rate(responseId, score, comment) {
    const json = { response_id: responseId, score };
    if (comment) json.comment = comment;
    return this.json("/v1/feedback", { method: "POST", json });
  }

  vectorStores() {
    return this.json("/v1/vector_stores?limit=100&order=desc");
  }

  createVectorStore(name) {
    return this.json("/v1/vector_stores", { method: "POST", json: { name } });
  }

  storeFiles(storeId) {
    return this.json(`/v1/vector_stores/${encodeURIComponent(storeId)}/files?limit=100&order=desc`);
  }

  attachFile(storeId, fileId) {
    return this.json(`/v1/vector_stores/${encodeURIComponent(storeId)}/files`, {
      method: "POST",
      json: { file_id: fileId },
    });
  }

  detachFile(storeId, fileId) {
    const path = `/v1/vector_stores/${encodeURIComponent(storeId)}/files/${encodeURIComponent(fileId)}`;
    return this.json(path, { method: "DELETE" });
  }

  file(fileId) {
    return this.json(`/v1/files/${encodeURIComponent(fileId)}`);
  }

  uploadFile(file) {
    const form = new FormData();
    form.append("purpose", "assistants");
    form.append("file", file, file.name);
    return this.json("/v1/files", { method: "POST", form });
  }

  generateImages(request) {
    return this.json("/v1/images/generations", { method: "POST", json: { ...request, response_format: "url" } });
  }

  images({ after } = {}) {
    const query = new URLSearchParams({ limit: "24" });
    if (after) query.set("after", after);
    return this.json(`/v1/images?${query}`);
  }

  /**
   * POST /v1/chat/completions with stream: true; yields each chunk (a parsed JSON object) until `data: [DONE]`.
   * An error event inside the stream (the model failed after the answer began) is thrown as ApiError.
   */
  async *streamChat(request, signal) {
    const response = await this.request("/v1/chat/completions", {
      method: "POST",
      json: { ...request, stream: true },
      signal,
    });
    for await (const data of serverSentEvents(response.body, signal)) {
      if (data === "[DONE]") return;
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch {
        continue; // not ours to understand (a comment or keep-alive of a proxy): skip it
      }
      if (chunk.error) throw new ApiError(statusOfCode(chunk.error.code), chunk);
      yield chunk;
    }
  }
}

/** The HTTP status an error event would have had, from its code (events carry no status line). */
function statusOfCode(code) {
  return (
    {
      upstream_error: 502,
      service_unavailable: 503,
      server_shutting_down: 503,
      timeout: 504,
      rate_limit_exceeded: 429,
      content_policy_violation: 400,
    }[code] || 500
  );
}

/** The `data` of each server-sent event of a response body (multi-line data joined with "\n"). */
export async function* serverSentEvents(body, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let boundary;
      while ((boundary = buffer.search(/\r?\n\r?\n/)) !== -1) {
        const event = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary).replace(/^\r?\n\r?\n/, "");
        const data = event
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""));
        if (data.length) yield data.join("\n");
      }
    }
  } finally {
    if (signal && signal.aborted) reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
