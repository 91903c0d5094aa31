"""The ``diffusers`` image provider: a local Stable Diffusion family pipeline, on the CPU or a GPU.

The pipeline is loaded from the directory the route names (``pipeline_path``, the layout ``save_pretrained``
writes) with ``local_files_only=True``: nothing is downloaded, ever. It needs the optional extra
``pip install 'genai-platform[images]'`` (diffusers, transformers).

One pipeline per process, loaded on first use (or at start by ``warm_up``), run in a worker thread, one
generation at a time (a pipeline's scheduler is not safe to share between threads); requests queue for it within
the route's ``timeout``. A request that times out (or is cancelled) stops its pipeline at the next denoising step.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chains.images.base import GeneratedImage, png_of, size_of
from chains.model_routes import ModelRoute
from errors import APIError, ContentPolicyViolation, InvalidRequest, ServiceUnavailable, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

INSTALL_HINT = "install the platform with its images extra: pip install 'genai-platform[images]'"


def check_options(route: str, options: Mapping[str, Any]) -> None:
    """OpenAI's ``quality`` and ``style`` mean nothing to a pipeline: refused, but for the default quality that
    clients such as LangChain's DALL-E wrapper always send."""
    for name, value in options.items():
        if name == "quality" and value in ("auto", "standard"):
            continue
        raise InvalidRequest(
            f"'{name}' is not supported by the image model `{route}` (a local diffusion pipeline).",
            param=name,
            code="unsupported_parameter",
        )


def _dtype_argument() -> str:
    """``dtype`` in newer diffusers, ``torch_dtype`` (deprecated there) in older ones."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


class _Cancelled(Exception):
    """Raised from the pipeline's step callback to stop a generation nobody waits for any more."""


class DiffusersImages:
    kind = "diffusers"

    def __init__(self, route: ModelRoute) -> None:
        self.route = route
        self.path = Path(route.pipeline_path or "")
        self.device: str | None = None
        self._pipeline: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()

    # ------------------------------------------------------------------ loading

    def load(self) -> Any:
        """The pipeline, loaded by the first caller (thread-safe; seconds to minutes, so never on the event loop)."""
        if self._pipeline is not None:
            return self._pipeline
        with self._load_lock:
            if self._pipeline is None:
                self._pipeline = self._load()
        return self._pipeline

    def _load(self) -> Any:
        name = self.route.name
        try:
            import torch
            from diffusers import DiffusionPipeline
        except ImportError as exc:
            raise ServiceUnavailable(
                f"The image model `{name}` needs diffusers ({exc.name} is missing): {INSTALL_HINT}."
            )
        if not (self.path / "model_index.json").is_file():
            raise ServiceUnavailable(
                f"The image model `{name}` has no pipeline at {self.path}: its `pipeline_path` must be a directory "
                "saved with save_pretrained (with a model_index.json)."
            )
        device = self.route.image_device or ("cuda" if torch.cuda.is_available() else "cpu")
        options: dict[str, Any] = {}
        if device.startswith("cuda"):  # half precision on a GPU; the default (float32) elsewhere
            options[_dtype_argument()] = torch.float16
        log.info("loading the image pipeline of %s from %s on %s", name, self.path, device)
        try:
            pipeline = DiffusionPipeline.from_pretrained(str(self.path), local_files_only=True, **options)
            pipeline = pipeline.to(device)
        except Exception as exc:
            log.exception("the image pipeline of %s could not be loaded", name)
            raise ServiceUnavailable(
                f"The image model `{name}` could not load its pipeline from {self.path}: {type(exc).__name__}: "
                f"{str(exc)[:300]}"
            ) from None
        pipeline.set_progress_bar_config(disable=True)
        self.device = device
        return pipeline

    def warm_up(self) -> None:
        threading.Thread(target=self._load_quietly, name=f"load-{self.route.name}", daemon=True).start()

    def _load_quietly(self) -> None:
        try:
            self.load()
        except APIError as error:
            log.error("%s", error.message)
        except Exception:
            log.exception("the image pipeline of %s could not be loaded", self.route.name)

    # ------------------------------------------------------------------ generating

    async def generate(
        self, prompt: str, *, n: int, size: str, user: str | None = None, options: Mapping[str, Any] | None = None
    ) -> list[GeneratedImage]:
        check_options(self.route.name, options or {})
        cancelled = threading.Event()
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._run, prompt, n, size, cancelled), timeout=self.route.timeout
            )
        except TimeoutError:
            cancelled.set()
            raise UpstreamTimeout(
                f"The image model `{self.route.name}` did not finish within {self.route.timeout:g} s."
            ) from None
        except BaseException:
            cancelled.set()  # the thread stops at its next step; the lock is then free for the next request
            raise

    def _run(self, prompt: str, n: int, size: str, cancelled: threading.Event) -> list[GeneratedImage]:
        pipeline = self.load()
        width, height = size_of(size)
        call: dict[str, Any] = {
            "prompt": prompt,
            "num_images_per_prompt": n,
            "width": width,
            "height": height,
            "output_type": "pil",
        }
        if self.route.image_steps is not None:
            call["num_inference_steps"] = self.route.image_steps
        if self.route.image_guidance_scale is not None:
            call["guidance_scale"] = self.route.image_guidance_scale

        def stop_when_cancelled(_pipeline: Any, _step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancelled.is_set():
                raise _Cancelled
            return tensors

        if "callback_on_step_end" in inspect.signature(pipeline.__call__).parameters:
            call["callback_on_step_end"] = stop_when_cancelled
        with self._run_lock:
            if cancelled.is_set():
                raise _Cancelled
            try:
                import torch

                with torch.inference_mode():
                    output = pipeline(**call)
            except _Cancelled:
                raise
            except Exception as exc:
                raise self._error_of(exc) from exc
        flagged = list(getattr(output, "nsfw_content_detected", None) or [False] * len(output.images))
        kept = [png_of(image) for image, hit in zip(output.images, flagged, strict=False) if not hit]
        if not kept:
            raise ContentPolicyViolation(
                f"The image model `{self.route.name}`'s safety checker withheld every image it made for this prompt.",
                param="prompt",
            )
        return kept

    def _error_of(self, exc: Exception) -> APIError:
        name = self.route.name
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
            return ServiceUnavailable(f"The image model `{name}` ran out of memory on {self.device}; retry later.")
        log.error("the image pipeline of %s failed", name, exc_info=exc)
        return UpstreamError(f"The image model `{name}` failed: {type(exc).__name__}: {str(exc)[:300]}")

    async def aclose(self) -> None:
        self._pipeline = None
