"""The ``diffusers`` image provider on the real diffusers code path, with nothing downloaded: the test builds a tiny
randomly initialised Stable Diffusion pipeline (a UNet, a VAE, a CLIP text encoder and a byte-level CLIP tokenizer
from a vocabulary written here, a PNDM scheduler), saves it with ``save_pretrained``, and the platform loads it
from that directory (``DiffusionPipeline.from_pretrained(path, local_files_only=True)``) and runs 2 steps.

The images are noise: the tests check sizes, counts, PNG round trips, the books and the failures, not content.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image as PILImage

from chains.images.diffusers_images import DiffusersImages
from chains.model_routes import ModelRoute
from errors import ServiceUnavailable, UpstreamTimeout
from storage.tables import Image, Usage
from tests.test_errors import assert_error

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

SIZES = ["64x64", "32x32"]


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte-level alphabet: one printable character per byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def build_tiny_pipeline(directory: Path) -> Path:
    """A tiny Stable Diffusion pipeline with random weights, saved to ``directory / "pipeline"``."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    alphabet = _bytes_to_unicode()
    vocab = {symbol: index for index, symbol in enumerate([*alphabet, *(f"{c}</w>" for c in alphabet)])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    words = directory / "tokenizer-source"
    words.mkdir(parents=True)
    (words / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (words / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab_file=str(words / "vocab.json"), merges_file=str(words / "merges.txt"), model_max_length=16
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            projection_dim=32,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )  # fmt: skip
    )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=32,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    saved = directory / "pipeline"
    pipeline.save_pretrained(saved)
    return saved


@pytest.fixture(scope="module")
def pipeline_path(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("sd-tiny"))


@pytest.fixture(scope="module", autouse=True)
def _offline_and_one_thread():
    """Nothing may be fetched (the hub is unreachable anyway); one torch thread keeps a step fast while other
    processes use the other core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield
    torch.set_num_threads(threads)


def sd_route(path: Path | str, **overrides) -> ModelRoute:
    values = {
        "name": "sd-tiny",
        "serves": "images",
        "image_provider": "diffusers",
        "pipeline_path": str(path),
        "image_sizes": SIZES,
        "image_steps": 2,
        "image_device": "cpu",
        "timeout": 60.0,
        **overrides,
    }
    return ModelRoute(**values)


@pytest.fixture
def sd_server(live_server, mock_upstream, pipeline_path):
    return live_server(
        model_routes=[ModelRoute(name="mock", base_url=mock_upstream, max_retries=0), sd_route(pipeline_path)]
    )


def decode(data: bytes) -> PILImage.Image:
    image = PILImage.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def test_generates_pngs_through_the_api(sd_server):
    client = sd_server.openai()
    response = client.images.generate(
        model="sd-tiny", prompt="A red fox in the snow", n=2, size="64x64", response_format="b64_json"
    )
    assert len(response.data) == 2
    for item in response.data:
        assert item.revised_prompt is None
        image = decode(base64.b64decode(item.b64_json))
        assert image.size == (64, 64) and image.mode == "RGB"
    # The default size, and a URL that serves the stored PNG.
    [item] = client.images.generate(model="sd-tiny", prompt="A lighthouse").data
    assert decode(httpx.get(item.url).content).size == (64, 64)
    with sd_server.http() as http:
        small = http.post("/v1/images/generations", json={"prompt": "A boat", "size": "32x32", "quality": "standard"})
        assert small.status_code == 200, small.text
        assert decode(httpx.get(small.json()["data"][0]["url"]).content).size == (32, 32)
        models = {model["id"]: model for model in http.get("/v1/models").json()["data"]}
        assert models["sd-tiny"]["provider"] == "diffusers" and models["sd-tiny"]["sizes"] == SIZES
        # What a pipeline cannot do is refused by name.
        assert_error(http.post("/v1/images/generations", json={"prompt": "x", "size": "512x512"}), 400, param="size")
        assert_error(
            http.post("/v1/images/generations", json={"prompt": "x", "quality": "hd"}),
            400,
            code="unsupported_parameter",
            param="quality",
        )
    records = [row for row in sd_server.rows(Usage.__table__) if row["status"] == "ok"]
    assert sorted(row["images"] for row in records) == [1, 1, 2]
    assert len(sd_server.rows(Image.__table__)) == 4
    metrics = httpx.get(f"{sd_server.url}/metrics").text
    assert 'genai_images_generated_total{model="sd-tiny"} 4.0' in metrics


def test_a_missing_pipeline_is_503_naming_it(live_server, mock_upstream, tmp_path):
    server = live_server(
        model_routes=[ModelRoute(name="mock", base_url=mock_upstream), sd_route(tmp_path / "no-such-pipeline")]
    )
    with server.http() as http:
        error = assert_error(http.post("/v1/images/generations", json={"prompt": "A fox"}), 503)
    assert "no-such-pipeline" in error["message"] and "pipeline_path" in error["message"]
    [record] = server.rows(Usage.__table__)
    assert record["status"] == "service_unavailable" and record["model"] == "sd-tiny"


async def test_provider_loads_offline_and_round_trips(pipeline_path):
    provider = DiffusersImages(sd_route(pipeline_path))
    images = await provider.generate("A red fox", n=3, size="32x32")
    assert [(image.width, image.height) for image in images] == [(32, 32)] * 3
    assert provider.device == "cpu"
    for image in images:
        assert decode(image.png).size == (32, 32)


async def test_a_generation_past_its_time_limit_stops(pipeline_path):
    """A 504 when the route's timeout passes; the pipeline stops at its next step and serves the next request."""
    slow = DiffusersImages(sd_route(pipeline_path, image_steps=400, timeout=0.3))
    await asyncio.to_thread(slow.load)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await slow.generate("A fox", n=1, size="64x64")
    assert time.monotonic() - started < 2
    slow.route = sd_route(pipeline_path, timeout=30)
    [image] = await slow.generate("A fox", n=1, size="32x32")  # waits for the cancelled run to stop first
    assert (image.width, image.height) == (32, 32)


async def test_a_directory_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "model_index.json").write_text("{not json", encoding="utf-8")
    provider = DiffusersImages(sd_route(tmp_path))
    with pytest.raises(ServiceUnavailable) as failed:
        await provider.generate("A fox", n=1, size="32x32")
    assert str(tmp_path) in failed.value.message
