"""LangChain's standard chat-model suite (``langchain_tests``' ``ChatModelIntegrationTests``) on ``ChatOpenAI``, twice:

- ``TestDirect``: ``ChatOpenAI(base_url=<the scripted upstream>)``: what the suite expects of a model server that
  serves the whole chat completions surface (tools, structured output, JSON mode, images, PDFs, audio);
- ``TestThroughPlatform``: ``ChatOpenAI(base_url=<the platform>/v1, api_key=<an app key>)``, the platform in front of
  that same upstream. Whatever passes directly is expected to pass through the platform: it forwards the whole
  OpenAI chat surface.

No network: the files the suite downloads (an image, a PDF, a WAV) come from ``tests/lc_assets/``. ``stream_usage``
is on, as ``ChatOpenAI`` asks for usage in streams only from api.openai.com by default. Skipped by the suite's own
switches: images and PDFs in tool messages (OpenAI's chat completions take text only there) and the VCR benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.integration_tests import chat_models as standard_suite

from server.settings import Settings
from tests.conftest import ADMIN_KEY, LiveServer
from tests.scripted_upstream import ScriptedUpstream, scripted_route, serve_scripted_upstream

pytestmark = [
    # Known, harmless warnings of the suite's own cases (a parsed Joke in openai's response model; a Pydantic v1
    # schema, which ChatOpenAI answers with function calling; a PDF block without a file name).
    pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning"),
    pytest.mark.filterwarnings("ignore:Received a Pydantic BaseModel V1 schema:UserWarning"),
    pytest.mark.filterwarnings("ignore:OpenAI may require a filename:UserWarning"),
]

ASSETS = Path(__file__).parent / "lc_assets"
MODEL = "scripted"
OTHER_MODEL = "scripted-alt"  # for the suite's model-override tests: a second route to the same upstream


@pytest.fixture(scope="module")
def scripted_upstream() -> Iterator[ScriptedUpstream]:
    with serve_scripted_upstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def scripted_platform(scripted_upstream, tmp_path_factory) -> Iterator[LiveServer]:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("standard") / "data",
        model_routes=[scripted_route(MODEL, scripted_upstream), scripted_route(OTHER_MODEL, scripted_upstream)],
        admin_key=ADMIN_KEY,
    )
    server = LiveServer(settings).start()
    yield server
    server.stop()


class _LocalDownloads:
    """Stands in for the ``httpx`` module of the standard suite, which only calls ``httpx.get(url)`` to fetch its
    sample files: a URL ending in .png, .pdf or .wav is answered from ``tests/lc_assets``, any other fails the test."""

    FILES: ClassVar[dict[str, str]] = {
        ".png": "image.png",
        ".pdf": "document.pdf",
        ".wav": "audio.wav",
    }

    class _Response:
        def __init__(self, content: bytes) -> None:
            self.content = content
            self.status_code = 200

        def raise_for_status(self) -> None:
            return None

    def get(self, url: str, **_: Any) -> _LocalDownloads._Response:
        for suffix, name in self.FILES.items():
            if url.endswith(suffix):
                return self._Response((ASSETS / name).read_bytes())
        raise AssertionError(f"the standard suite wanted to download {url}: add a local file for it")


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch) -> None:
    monkeypatch.setattr(standard_suite, "httpx", _LocalDownloads())
    monkeypatch.setenv("LANGCHAIN_TESTS_USER_AGENT", "genai-platform-tests (local files, no download)")


class _ScriptedChatOpenAI(ChatModelIntegrationTests):
    """The suite's settings for ChatOpenAI against the scripted upstream, wherever ``base_url`` points."""

    base_url: str = ""
    api_key: str = "sk-scripted"

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": MODEL,
            "base_url": self.base_url,
            "api_key": self.api_key,
            "stream_usage": True,
            "max_retries": 0,
            "timeout": 30,
        }

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_image_urls(self) -> bool:
        return True  # the upstream takes an http(s) image URL as it is (it fetches nothing)

    @property
    def supports_pdf_inputs(self) -> bool:
        return True

    @property
    def supports_audio_inputs(self) -> bool:
        return True

    # Not set: images and PDFs in tool messages. OpenAI's chat completions take text parts only there (the scripted
    # upstream refuses others, as OpenAI), and langchain-openai's own standard tests leave both off for ChatOpenAI.

    @property
    def supports_anthropic_inputs(self) -> bool:
        # As in langchain-openai's own standard tests: ChatOpenAI turns Anthropic's shapes into OpenAI's, keeping
        # `cache_control` in text parts, which OpenAI ignores.
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str | None:
        return OTHER_MODEL


class TestDirect(_ScriptedChatOpenAI):
    """ChatOpenAI straight at the scripted upstream."""

    @pytest.fixture(autouse=True, scope="class")
    def _endpoint(self, request, scripted_upstream) -> None:
        request.cls.base_url = scripted_upstream.base_url


class TestThroughPlatform(_ScriptedChatOpenAI):
    """ChatOpenAI at the platform (an app key), the platform in front of the scripted upstream."""

    @pytest.fixture(autouse=True, scope="class")
    def _endpoint(self, request, scripted_platform) -> None:
        request.cls.base_url = f"{scripted_platform.url}/v1"
        request.cls.api_key = scripted_platform.key
