"""The image request path, wired:

    validate -> screen_prompt -> generate -> store -> respond

``validate`` checks the request against its image route (the model, ``n``, ``size``, the prompt's length, fields
the platform does not take); ``screen_prompt`` runs the chat path's input guard and the moderation checker on the
prompt, for apps whose modes are not off (a blocked prompt is 400 ``content_policy_violation``, naming
``prompt``); ``generate`` asks the route's provider (``chains.images``); ``store`` writes the PNGs, their rows and
the request's usage record (``storage.images``); ``respond`` makes OpenAI's ``data`` items: a signed URL of the
platform's download route, or the PNG as base64.

A failure raises an API error out of the graph; the image service (``server.image_service``) records it.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from chains.images import OPTION_FIELDS, GeneratedImage, ImageRegistry
from errors import ContentPolicyViolation, InvalidRequest, ServiceUnavailable
from graphs.chat.context import InputGuard
from graphs.chat.safety import screen_input
from storage.images import ImageStore, NewImage
from storage.transcripts import TurnRecord

log = logging.getLogger(__name__)

# Fields of OpenAI's image request that the platform does not take (400 naming them), with the reason.
REFUSED_FIELDS = {
    "background": "images are stored as opaque PNGs",
    "moderation": "prompts are moderated by the platform's own checker, per app",
    "output_compression": "images are stored as PNGs",
    "output_format": "images are stored as PNGs (send 'png' or leave it out)",
    "partial_images": "images are not streamed",
    "stream": "images are not streamed",
}
# Values of those fields that are the platform's behaviour anyway, accepted.
ACCEPTED_VALUES = {"output_format": {"png"}, "stream": {False}, "partial_images": {0}}


class UrlSigner(Protocol):
    """Signed download URLs (``storage.images.SignedUrls``)."""

    def url(self, base_url: str, image_id: str) -> str: ...


class PromptModeration(Protocol):
    """What the graph needs of a moderation checker (``chains.safety.moderation``)."""

    name: str

    async def check(self, texts: list[str]) -> list[Any]: ...


@dataclass
class ImageContext:
    models: ImageRegistry
    store: ImageStore
    urls: UrlSigner
    # The input guard and the moderation checker chat uses (None: no screening, whatever the app's modes).
    guard: InputGuard | None = None
    moderation: PromptModeration | None = None
    max_prompt_chars: int = 4000


class ImageInput(TypedDict, total=False):
    prompt: str
    model: str | None
    n: int
    size: str | None
    response_format: str  # "url" or "b64_json"
    user: str | None
    # OpenAI fields for the provider (quality, style), and the other fields the client sent (refused by name).
    options: dict[str, Any]
    extra: dict[str, Any]
    response_id: str
    started_at: float
    # The calling app: its data scope, its routes, its safety modes ("off", "flag" or "block").
    app_id: str
    key_prefix: str | None
    allowed_models: list[str] | None
    guard_mode: str
    moderation_mode: str
    # Where the platform is reached, for the images' URLs.
    base_url: str


class ImageState(ImageInput, total=False):
    model_name: str
    safety: dict[str, Any]
    generated: list[GeneratedImage]
    # The stored images: {"id", "created", "revised_prompt"}.
    images: list[dict[str, Any]]
    cost: float
    latency_ms: float
    created: int
    # OpenAI's response items: {"id", "url" | "b64_json", "revised_prompt"}.
    data: list[dict[str, Any]]


async def validate(state: ImageState, runtime: Runtime[ImageContext]) -> dict[str, Any]:
    """The request against its route: refuse what the platform or the route does not take, naming it."""
    context = runtime.context
    refuse_extra(state.get("extra") or {})
    prompt = state.get("prompt") or ""
    if not prompt.strip():
        raise InvalidRequest(
            "`prompt` must not be empty: describe the image to generate.", param="prompt", code="invalid_value"
        )
    if len(prompt) > context.max_prompt_chars:
        raise InvalidRequest(
            f"`prompt` is too long: {len(prompt)} characters, at most {context.max_prompt_chars} are allowed.",
            param="prompt",
            code="string_above_max_length",
        )
    model = context.models.get(state.get("model"), allowed=state.get("allowed_models"))
    n = state.get("n") or 1
    if n > model.route.image_max_n:
        raise InvalidRequest(
            f"The image model `{model.name}` makes at most {model.route.image_max_n} image"
            f"{'s' if model.route.image_max_n > 1 else ''} per request; `n` was {n}.",
            param="n",
            code="invalid_value",
        )
    if model.route.image_provider_kind == "diffusers":
        from chains.images.diffusers_images import check_options

        check_options(model.name, state.get("options") or {})
    size = state.get("size")
    if size in (None, "auto"):
        size = model.default_size
    elif size not in model.sizes:
        raise InvalidRequest(
            f"The image model `{model.name}` does not make images of size '{size}': it makes {', '.join(model.sizes)}.",
            param="size",
            code="invalid_value",
        )
    return {
        "model_name": model.name,
        "n": n,
        "size": size,
        "started_at": state.get("started_at") or time.perf_counter(),
    }


def refuse_extra(extra: dict[str, Any]) -> None:
    for name, value in extra.items():
        if name in ACCEPTED_VALUES and value in ACCEPTED_VALUES[name]:
            continue
        reason = REFUSED_FIELDS.get(name)
        raise InvalidRequest(
            f"'{name}' is not supported by this platform's image API: {reason}."
            if reason
            else f"Unrecognized request argument supplied: {name}",
            param=name,
            code="unsupported_parameter",
        )


def after_validate(state: ImageState) -> str:
    """``screen_prompt`` only for apps that screen their input or moderate."""
    screening = state.get("guard_mode", "off") != "off" or state.get("moderation_mode", "off") != "off"
    return "screen_prompt" if screening else "generate"


async def screen_prompt(state: ImageState, runtime: Runtime[ImageContext]) -> dict[str, Any]:
    """The chat path's input guard, then the moderation checker, on the prompt; refused in ``block`` mode."""
    context = runtime.context
    safety = state.get("safety")
    if context.guard is not None and state.get("guard_mode", "off") != "off":
        safety = await screen_input(context.guard, state["prompt"], state["guard_mode"], safety, param="prompt")
    mode = state.get("moderation_mode", "off")
    if context.moderation is not None and mode != "off":
        safety = await moderate_prompt(context.moderation, state["prompt"], mode, safety)
    return {"safety": safety} if safety else {}


async def moderate_prompt(
    checker: PromptModeration, prompt: str, mode: str, safety: dict[str, Any] | None
) -> dict[str, Any] | None:
    """``safety`` with the moderation verdict on the prompt (the shape of ``graphs.chat.safety``'s)."""
    try:
        result = (await checker.check([prompt]))[0]
    except Exception as exc:
        if mode == "block":  # the app wants nothing through unchecked
            raise ServiceUnavailable("The moderation checker is unavailable: the prompt could not be checked.") from exc
        log.warning("the moderation checker failed on an image prompt; let through (flag mode)", exc_info=exc)
        return safety
    blocked = result.flagged and mode == "block"
    categories = list(result.flagged_categories)
    verdict = {
        "flagged": bool(result.flagged),
        "categories": categories,
        "checker": checker.name,
        "action": "blocked" if blocked else "flagged" if result.flagged else "allowed",
    }
    safety = {**(safety or {}), "moderation": verdict}
    if blocked:
        raise ContentPolicyViolation(
            f"Your prompt was rejected by the platform's moderation: it was flagged for {', '.join(categories)}.",
            safety=safety,
            param="prompt",
        )
    return safety


async def generate(state: ImageState, runtime: Runtime[ImageContext]) -> dict[str, Any]:
    model = runtime.context.models.get(state["model_name"])
    options = {name: value for name, value in (state.get("options") or {}).items() if name in OPTION_FIELDS}
    images = await model.provider.generate(
        state["prompt"], n=state["n"], size=state["size"], user=state.get("user"), options=options
    )
    return {"generated": images}


async def store(state: ImageState, runtime: Runtime[ImageContext]) -> dict[str, Any]:
    """The PNGs, their rows and the request's usage record, together."""
    context = runtime.context
    model = context.models.get(state["model_name"])
    generated = state["generated"]
    latency_ms = (time.perf_counter() - state["started_at"]) * 1000
    cost = model.cost(len(generated))
    rows = await context.store.save(
        [NewImage(image.png, f"{image.width}x{image.height}", image.revised_prompt) for image in generated],
        app_id=state["app_id"],
        user=state.get("user"),
        model=model.name,
        prompt=state["prompt"],
        usage=TurnRecord(
            response_id=state["response_id"],
            app_id=state["app_id"],
            key_prefix=state.get("key_prefix"),
            user=state.get("user"),
            model=model.name,
            prompt_tokens=0,
            completion_tokens=0,
            latency_ms=latency_ms,
            cost=cost,
            safety=state.get("safety"),
        ),
    )
    images = [{"id": row.id, "created": row.created_at, "revised_prompt": row.revised_prompt} for row in rows]
    return {"images": images, "cost": cost, "latency_ms": latency_ms, "created": rows[0].created_at}


async def respond(state: ImageState, runtime: Runtime[ImageContext]) -> dict[str, Any]:
    """OpenAI's ``data`` items, with the platform's image ids."""
    data = []
    for image, generated in zip(state["images"], state["generated"], strict=True):
        item: dict[str, Any] = {"id": image["id"]}
        if state.get("response_format") == "b64_json":
            item["b64_json"] = base64.b64encode(generated.png).decode()
        else:
            item["url"] = runtime.context.urls.url(state["base_url"], image["id"])
        item["revised_prompt"] = image["revised_prompt"]
        data.append(item)
    return {"data": data}


def build_image_graph() -> CompiledStateGraph:
    """Compiled once per process; each run gets its dependencies as ``context=ImageContext(...)``."""
    graph = StateGraph(ImageState, input_schema=ImageInput, context_schema=ImageContext)
    graph.add_node("validate", validate)
    graph.add_node("screen_prompt", screen_prompt)
    graph.add_node("generate", generate)
    graph.add_node("store", store)
    graph.add_node("respond", respond)
    graph.add_edge(START, "validate")
    graph.add_conditional_edges("validate", after_validate, ["screen_prompt", "generate"])
    graph.add_edge("screen_prompt", "generate")
    graph.add_edge("generate", "store")
    graph.add_edge("store", "respond")
    graph.add_edge("respond", END)
    return graph.compile(name="image")
