// The web chat UI's entry point: the API key, the tabs, the models and stores the pickers offer, and the wiring
// between the sidebar, the conversation, the knowledge panel and the image tab.

import { Api, keyStore } from "./api.js";
import { ChatView } from "./chat.js";
import { humanMessage } from "./errors.js";
import { ImagesPanel } from "./images.js";
import { KnowledgePanel } from "./knowledge.js";
import { announce, clearErrors, reportError } from "./notices.js";
import { Sidebar } from "./sidebar.js";

const MODEL_STORAGE = "genai.model";
const NARROW = window.matchMedia("(max-width: 760px)");

/** Image models: the route says it serves images (the marker `/v1/models` gives them). */
export function isImageModel(model) {
  const serves = model.serves ?? model.capabilities ?? [];
  return (
    model.type === "image" ||
    model.type === "images" ||
    serves === "images" ||
    (Array.isArray(serves) && serves.includes("images")) ||
    Boolean(model.features && model.features.images)
  );
}

export function isChatModel(model) {
  return model.type !== "embedding" && !isImageModel(model);
}

const api = new Api({
  onUnauthorized: (error) => openKeyDialog({ required: true, message: humanMessage(error) }),
  onAnswered: () => clearErrors((alert) => alert.dataset.key === "rate-limit"),
});
const els = {
  modelSelect: document.getElementById("model-select"),
  storeSelect: document.getElementById("store-select"),
  sidebar: document.getElementById("sidebar"),
  sidebarToggle: document.getElementById("sidebar-toggle"),
  backdrop: document.getElementById("sidebar-backdrop"),
};
let stores = [];
let modelsLoaded = Promise.resolve();

// ---------------------------------------------------------------- the parts

const chat = new ChatView(api, {
  async request() {
    await modelsLoaded;
    const request = { model: els.modelSelect.value };
    const store = els.storeSelect.value;
    if (store === "none") request.vector_store_ids = [];
    else if (store) request.vector_store_ids = [store];
    return request;
  },
  onConversation(id, { started = false, title = "", dropped = false }) {
    if (dropped) {
      // Its first turn failed or was stopped: the server stored nothing, so there is no conversation yet.
      setHash(null);
      sidebar.setCurrent(null);
      return;
    }
    if (started) {
      setHash(id);
      sidebar.currentId = id;
      chat.renamed(title);
      return; // it is in the list once its first turn is stored
    }
    sidebar.load().then(() => {
      const conversation = sidebar.find(id);
      if (conversation && conversation.title) chat.renamed(conversation.title);
    });
  },
});

const sidebar = new Sidebar(api, {
  onOpen(conversation) {
    sidebar.setCurrent(conversation.id);
    setHash(conversation.id);
    closeSidebar({ focus: false });
    chat.open(conversation);
    document.getElementById("composer-input").focus();
  },
  onNew() {
    sidebar.setCurrent(null);
    setHash(null);
    closeSidebar({ focus: false });
    chat.startNew();
    document.getElementById("composer-input").focus();
  },
  onRenamed(id, title) {
    if (chat.conversationId === id) chat.renamed(title);
  },
  onDeleted(id) {
    if (chat.conversationId === id) {
      setHash(null);
      sidebar.setCurrent(null);
      chat.startNew();
    }
  },
});

const knowledge = new KnowledgePanel(api, {
  onStores(list) {
    stores = list;
    fillStoreSelect();
  },
  onUse(store) {
    fillStoreSelect();
    els.storeSelect.value = store.id;
    selectTab("chat");
    document.getElementById("composer-input").focus();
    announce(`The chat now answers from “${store.name || store.id}”.`);
  },
});

const images = new ImagesPanel(api);

function setHash(id) {
  history.replaceState(null, "", id ? `#${encodeURIComponent(id)}` : location.pathname);
}

// ---------------------------------------------------------------- pickers

/** Run `load` again once a rate limit's wait is over (the page's first loads count against the key's limit). */
export function retryAfterLimit(error, load) {
  if (error && error.status === 429 && error.retryAfter) setTimeout(load, error.retryAfter * 1000 + 250);
}

async function loadModels() {
  let models = [];
  try {
    models = (await api.models()).data;
  } catch (error) {
    reportError(error, "load");
    retryAfterLimit(error, () => {
      modelsLoaded = loadModels();
    });
  }
  const chatModels = models.filter(isChatModel);
  const saved = localStorage.getItem(MODEL_STORAGE);
  const options = chatModels.map((model) => {
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = model.id;
    return option;
  });
  if (!options.length) {
    const none = document.createElement("option");
    none.value = "";
    none.textContent = "No model available";
    options.push(none);
  }
  els.modelSelect.replaceChildren(...options);
  if (chatModels.some((m) => m.id === saved)) els.modelSelect.value = saved;
  images.setModels(models.filter(isImageModel));
}

function fillStoreSelect() {
  const previous = els.storeSelect.value;
  const fallback = stores.find((s) => s.default);
  const options = [];
  const add = (value, text) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = text;
    options.push(option);
  };
  if (fallback) {
    add("", `Documents: ${fallback.name || fallback.id} (app default)`);
    add("none", "No documents");
  } else {
    add("", "No documents");
  }
  for (const store of stores) add(store.id, store.name || store.id);
  els.storeSelect.replaceChildren(...options);
  if ([...els.storeSelect.options].some((o) => o.value === previous)) els.storeSelect.value = previous;
}

els.modelSelect.addEventListener("change", () => localStorage.setItem(MODEL_STORAGE, els.modelSelect.value));

// ---------------------------------------------------------------- tabs (WAI-ARIA tabs: arrows move, Home/End)

const tabs = [...document.querySelectorAll('[role="tab"]')];
const loadedTabs = new Set(["chat"]);

function selectTab(name, { focus = false } = {}) {
  if (document.body.dataset.tab && document.body.dataset.tab !== name) {
    // What went wrong on the other tab is done with; a rate limit or an unreachable server still holds.
    clearErrors((alert) => !/^(rate-limit|load:)/.test(alert.dataset.key));
  }
  for (const tab of tabs) {
    const selected = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    document.getElementById(tab.getAttribute("aria-controls")).hidden = !selected;
    if (selected && focus) tab.focus();
  }
  document.body.dataset.tab = name;
  if (!loadedTabs.has(name) && api.key) {
    loadedTabs.add(name);
    if (name === "images") images.load();
    if (name === "knowledge") knowledge.loadFiles();
  }
}

for (const tab of tabs) {
  tab.addEventListener("click", () => selectTab(tab.id.slice(4)));
  tab.addEventListener("keydown", (event) => {
    const index = tabs.indexOf(tab);
    const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    const target = tabs[(next + tabs.length) % tabs.length];
    selectTab(target.id.slice(4), { focus: true });
  });
}

// ---------------------------------------------------------------- the sidebar on a narrow screen

// While the sidebar covers the page, what it covers is inert: the focus stays in the sidebar.
const covered = () => [document.querySelector(".topbar"), document.querySelector(".conversation-pane")];

function openSidebar() {
  els.sidebar.classList.add("open");
  els.backdrop.hidden = false;
  for (const element of covered()) element.inert = true;
  els.sidebarToggle.setAttribute("aria-expanded", "true");
  document.getElementById("new-chat").focus();
}

function closeSidebar({ focus = true } = {}) {
  if (!els.sidebar.classList.contains("open")) return;
  els.sidebar.classList.remove("open");
  els.backdrop.hidden = true;
  for (const element of covered()) element.inert = false;
  els.sidebarToggle.setAttribute("aria-expanded", "false");
  if (focus) els.sidebarToggle.focus();
}

els.sidebarToggle.addEventListener("click", () =>
  els.sidebar.classList.contains("open") ? closeSidebar() : openSidebar(),
);
document.getElementById("sidebar-close").addEventListener("click", () => closeSidebar());
els.backdrop.addEventListener("click", () => closeSidebar());
els.sidebar.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && NARROW.matches) closeSidebar();
});
NARROW.addEventListener("change", () => closeSidebar({ focus: false }));

// ---------------------------------------------------------------- the API key

const dialog = document.getElementById("key-dialog");
const keyInput = document.getElementById("key-input");
const keyError = document.getElementById("key-error");
let keyRequired = false;

function openKeyDialog({ required = false, message = "" } = {}) {
  keyRequired = required;
  keyError.textContent = message;
  keyInput.value = "";
  document.getElementById("key-cancel").hidden = required;
  document.getElementById("key-forget").hidden = !keyStore.get();
  if (!dialog.open) dialog.showModal();
  keyInput.focus();
}

dialog.addEventListener("cancel", (event) => {
  if (keyRequired && !api.key) event.preventDefault(); // nothing works without a key
});
document.getElementById("key-cancel").addEventListener("click", () => dialog.close());
document.getElementById("key-show").addEventListener("change", (event) => {
  keyInput.type = event.target.checked ? "text" : "password";
});
document.getElementById("key-forget").addEventListener("click", () => {
  keyStore.forget();
  location.replace(location.pathname);
});
document.getElementById("key-button").addEventListener("click", () => openKeyDialog());
document.getElementById("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) return;
  const save = document.getElementById("key-save");
  save.disabled = true;
  keyError.textContent = "Checking the key…";
  try {
    await api.models(key);
  } catch (error) {
    // 429: the key is valid (it was counted against its rate limit); anything else is refused here.
    if (error.status !== 429) {
      keyError.textContent = humanMessage(error);
      save.disabled = false;
      keyInput.focus();
      return;
    }
  }
  save.disabled = false;
  const hadKey = Boolean(api.key);
  keyStore.set(key);
  dialog.close();
  if (hadKey) {
    location.replace(location.pathname); // everything on the page belonged to the other key's app
    return;
  }
  api.key = key;
  start();
});

document.querySelector(".skip-link").addEventListener("click", (event) => {
  event.preventDefault(); // no #fragment in the URL: that place holds the open conversation
  selectTab("chat");
  document.getElementById("composer-input").focus();
});

document.getElementById("playground-link").addEventListener("click", () => {
  if (api.key) keyStore.shareWithPlayground(api.key);
});

// ---------------------------------------------------------------- start

async function start() {
  modelsLoaded = loadModels();
  await modelsLoaded;
  fillStoreSelect();
  const wanted = decodeURIComponent(location.hash.slice(1));
  await sidebar.load();
  const conversation = wanted && sidebar.find(wanted);
  if (conversation) sidebar.onOpen(conversation);
  else if (wanted) {
    try {
      sidebar.onOpen(await api.conversation(wanted)); // older than the first page of the list
    } catch {
      setHash(null);
    }
  }
  await knowledge.load();
  if (document.body.dataset.tab === "images") images.load();
  document.body.dataset.ready = "true"; // everything the page shows at first has loaded (the tests wait for it)
}

selectTab("chat");
if (api.key) start();
else openKeyDialog({ required: true });

window.genaiUI = { api, chat, sidebar, knowledge, images }; // for the tests and a curious developer's console
