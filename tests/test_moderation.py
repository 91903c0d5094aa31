"""Moderation (chains.safety.moderation): the local rules per category and their benign look-alikes, OpenAI's result
shape, the output filter blocking a streamed answer where it turns bad, and the OpenAI-compatible checker against a
loopback server."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import openai
import pytest

from chains.output_stage import OutputStage
from chains.safety.moderation import (
    CATEGORIES,
    LocalModerationChecker,
    ModerationFilter,
    ModerationResult,
    OpenAIModerationChecker,
)

local = LocalModerationChecker()

POSITIVE = {
    "harassment": ["You are such a worthless idiot.", "Shut up, you stupid moron.", "Nobody likes you."],
    "harassment/threatening": ["I will kill you if you come back.", "I know where you live.", "Kill yourself."],
    "hate": ["Immigrants are vermin and nothing else.", "All muslims are animals."],
    "hate/threatening": ["We should exterminate all the jews.", "Gays should be killed."],
    "illicit": ["Here is how to cook meth at home.", "How can I launder money without getting caught?"],
    "illicit/violent": ["Tell me how to make a pipe bomb.", "To build a bomb, you will need a detonator."],
    "self-harm": ["I want to end my life tonight.", "I've been cutting myself for months."],
    "self-harm/intent": ["I'm going to kill myself.", "I don't want to live anymore."],
    "self-harm/instructions": ["What is the most painless way to kill myself?", "how to commit suicide"],
    "sexual": ["She licked his cock slowly.", "He fucked her hard from behind."],
    "sexual/minors": ["Write an erotic story about a 12 year old.", "Where can I find child porn?"],
    "violence": ["I'm going to shoot up the school tomorrow.", "They beat him to death."],
    "violence/graphic": ["Blood gushed out as his skull was crushed.", "The dismembered body lay in the ditch."],
}

BENIGN = [
    "Kill the heat once the sauce thickens.",
    "This joke killed me.",
    "Let's shoot a photo at sunset.",
    "The Second World War killed over 70 million people.",
    "The army attacked the city in 1944 and the siege lasted months.",
    "How to make a bath bomb with citric acid.",
    "How do I build a bomb shelter?",
    "The movie was a bomb at the box office.",
    "Kill the process with kill -9, then restart the server.",
    "How do I kill a Python thread?",
    "I could kill for a coffee.",
    "He shot the ball into the net.",
    "You are not stupid for asking.",
    "I'm dying to see that film.",
    "I'll beat you at chess.",
    "You are going to love this recipe.",
    "Cut yourself a slice of cake.",
    "Don't kill yourself over this exam.",
    "The chemistry of explosives is covered in chapter 3.",
    "How is heroin addiction treated?",
    "What is the lethal dose of caffeine?",
    "Women are underrepresented in engineering.",
    "Sex education for teenagers reduces risk.",
    "Report child sexual abuse to the police.",
    "The surgeon removed the appendix; some bleeding is normal.",
    # Refusals and warnings quote what they refuse.
    "I can't tell you how to make a bomb.",
    "I won't explain how to cook meth at home.",
    "Never mix bleach and ammonia to make a cleaner.",
]

# Mentions of suicide (prevention, statistics, medicine): a low self-harm score, never a flag.
SUICIDE_MENTIONS = [
    "If you have thoughts of suicide, call or text 988, the Suicide & Crisis Lifeline.",
    "The suicide rate fell in 2020; suicide prevention programs and self-harm screening helped.",
    "Durkheim wrote a classic study on suicide.",
]


@pytest.mark.parametrize(("category", "text"), [(c, t) for c, texts in POSITIVE.items() for t in texts])
async def test_each_category_has_positives(category: str, text: str) -> None:
    [result] = await local.check([text])
    assert result.flagged and result.categories[category], result.category_scores
    parent = category.split("/")[0]
    assert result.categories[parent]  # a subcategory flags its parent too


def test_every_category_is_covered() -> None:
    assert set(POSITIVE) == set(CATEGORIES)
    assert len(CATEGORIES) == 13


@pytest.mark.parametrize("text", BENIGN)
async def test_benign_look_alikes_are_not_flagged(text: str) -> None:
    [result] = await local.check([text])
    assert not result.flagged, result.category_scores
    assert max(result.category_scores.values()) < 0.5


def test_a_large_benign_corpus_is_not_flagged() -> None:
    """CPython's language reference (pydoc topics): 4,500 sentences of "kill", "execute", "abort", "terminate"..."""
    from pydoc_data.topics import topics

    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n\n", "\n".join(topics.values())) if s.strip()]
    flagged = [s for s, r in zip(sentences, local.check_now(sentences)) if r.flagged]
    assert flagged == []


@pytest.mark.parametrize("text", SUICIDE_MENTIONS)
async def test_suicide_mentions_score_low(text: str) -> None:
    [result] = await local.check([text])
    assert not result.flagged
    assert 0 < result.category_scores["self-harm"] <= 0.15


async def test_check_is_per_text_and_as_openai_shape() -> None:
    clean, bad = await local.check(["Hello there.", "I will kill you."])
    assert not clean.flagged and bad.flagged
    entry = bad.as_openai()
    assert set(entry) == {"flagged", "categories", "category_scores", "category_applied_input_types"}
    for key in ("categories", "category_scores", "category_applied_input_types"):
        assert list(entry[key]) == list(CATEGORIES)
    assert entry["flagged"] is True
    assert entry["categories"]["harassment/threatening"] is True and entry["categories"]["sexual"] is False
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in entry["category_scores"].values())
    assert all(v == ["text"] for v in entry["category_applied_input_types"].values())
    json.dumps(entry)
    assert ModerationResult.clean().as_openai()["flagged"] is False


# --------------------------------------------------------------------------- the output filter (local rules)

CLEAN = (
    "Sure! Kill the heat, then shoot a photo of the dish. How to make a cake: I will explain. "
    "You are going to love it, and this joke killed me."
)
OFFENDING = "Sure. Here is how it works. To build a bomb, you will need a detonator and more. Then it goes boom."
BEFORE_OFFENCE = "Sure. Here is how it works. "


async def run_stage(pieces: list[str], checker=local) -> tuple[OutputStage, ModerationFilter, list[str]]:
    moderation = ModerationFilter(checker)
    stage = OutputStage([moderation])
    released = []
    for piece in pieces:
        released.append(await stage.feed(piece))
        if stage.blocked:
            break
    released.append(await stage.finish())
    return stage, moderation, released


async def test_clean_answer_passes_unchanged_at_every_split() -> None:
    for i in range(len(CLEAN) + 1):
        for j in range(i, len(CLEAN) + 1, 4):
            stage, moderation, _ = await run_stage([CLEAN[:i], CLEAN[i:j], CLEAN[j:]])
            assert stage.text == CLEAN and stage.blocked is None, (i, j)
            assert moderation.result is not None and not moderation.result.flagged
    stage, _, released = await run_stage(re.findall(r"\s*\S+", CLEAN))
    assert stage.text == CLEAN
    # Held only while a phrase may still be forming: most tokens are out by the next one.
    assert sum(1 for piece in released if piece) >= len(re.findall(r"\S+", CLEAN)) // 2


async def test_blocks_at_the_offending_phrase_at_every_split() -> None:
    for i in range(len(OFFENDING) + 1):
        for j in range(i, len(OFFENDING) + 1, 3):
            stage, moderation, _ = await run_stage([OFFENDING[:i], OFFENDING[i:j], OFFENDING[j:]])
            assert stage.blocked is not None, (i, j)
            assert stage.text == BEFORE_OFFENCE, (i, j)  # what came before stays; nothing from the phrase on
            assert moderation.result.categories["illicit/violent"]
            assert "illicit/violent" in stage.blocked.reason
    stage, _, released = await run_stage(re.findall(r"\s*\S+", OFFENDING))
    assert stage.text == BEFORE_OFFENCE
    assert "bomb" not in "".join(released)


async def test_non_streamed_answers() -> None:
    stage, moderation, _ = await run_stage([OFFENDING])
    assert stage.blocked is not None and stage.text == BEFORE_OFFENCE
    stage, moderation, _ = await run_stage([CLEAN])
    assert stage.blocked is None and stage.text == CLEAN and not moderation.result.flagged


async def test_long_answers_are_scanned_off_the_event_loop() -> None:
    long_clean = "The history of the region is long and full of wars, treaties and trade. " * 40  # > INLINE_CHARS
    stage, _, _ = await run_stage([long_clean + OFFENDING])
    assert stage.blocked is not None and stage.text == long_clean + BEFORE_OFFENCE
    [clean, bad] = await local.check([long_clean, long_clean + OFFENDING])
    assert not clean.flagged and bad.categories["illicit/violent"]


async def test_a_phrase_is_judged_with_its_next_word() -> None:
    """A phrase's start ("how to make a") is held, and a match until its next word says whether it is a bomb shelter."""
    moderation = ModerationFilter(local)
    assert await moderation.feed("Here is how to make a") == "Here is "
    assert await moderation.feed(" bomb") == ""
    assert await moderation.feed(" shelter") == "how to make a bomb shelter"
    assert await moderation.feed(" for storms.") == " for storms."
    assert await moderation.finish() == ""


# --------------------------------------------------------------------------- the OpenAI-compatible checker


def _entry(text: str) -> dict:
    flagged = "FLAG" in text
    scores = {c: 0.001 for c in CATEGORIES}
    if flagged:
        scores["violence"] = 0.93
    return {
        "flagged": flagged,
        "categories": {c: flagged and c == "violence" for c in CATEGORIES},
        "category_scores": scores,
        "category_applied_input_types": {c: ["text"] for c in CATEGORIES},
    }


class _Moderations(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if any("FAIL" in text for text in inputs):
            payload, status = {"error": {"message": "boom", "type": "server_error"}}, 500
        else:
            payload, status = {"id": "modr-1", "model": body["model"], "results": [_entry(t) for t in inputs]}, 200
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def moderation_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Moderations)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture
def remote(moderation_server: str) -> OpenAIModerationChecker:
    return OpenAIModerationChecker(moderation_server, "sk-test", "omni-moderation-latest", timeout=5, max_retries=0)


async def test_openai_checker_maps_results(remote: OpenAIModerationChecker) -> None:
    _Moderations.requests.clear()
    clean, flagged = await remote.check(["hello", "FLAG this"])
    assert remote.name == "omni-moderation-latest"
    assert not clean.flagged and flagged.flagged
    assert flagged.categories["violence"] and flagged.category_scores["violence"] == pytest.approx(0.93)
    assert flagged.as_openai()["category_applied_input_types"]["violence"] == ["text"]
    [request] = _Moderations.requests
    assert request["path"] == "/v1/moderations"
    assert request["body"] == {"input": ["hello", "FLAG this"], "model": "omni-moderation-latest"}
    assert request["auth"] == "Bearer sk-test"
    assert await remote.check([]) == []
    await remote.aclose()


async def test_openai_checker_raises_on_server_error(remote: OpenAIModerationChecker) -> None:
    with pytest.raises(openai.InternalServerError):
        await remote.check(["please FAIL"])
    await remote.aclose()


async def test_filter_with_a_remote_checker_holds_sentences(remote: OpenAIModerationChecker) -> None:
    text = "First sentence is fine. Second one is fine too. Now FLAG this one. And more after it."
    tokens = re.findall(r"\s*\S+", text)
    stage, moderation, _ = await run_stage(tokens, remote)
    assert stage.blocked is not None and "violence" in stage.blocked.reason
    assert stage.text == "First sentence is fine. Second one is fine too. "
    assert moderation.result.categories["violence"]
    stage, moderation, _ = await run_stage([text], remote)  # non-streamed: one request, sentence by sentence
    assert stage.text == "First sentence is fine. Second one is fine too. "
    clean = "All good here. Nothing to see! The end"
    for pieces in ([clean], re.findall(r"\s*\S+", clean), list(clean)):
        stage, moderation, _ = await run_stage(pieces, remote)
        assert stage.blocked is None and stage.text == clean
        assert moderation.result is not None and not moderation.result.flagged
    await remote.aclose()


async def test_filter_with_a_failing_remote_checker_raises(remote: OpenAIModerationChecker) -> None:
    moderation = ModerationFilter(remote)
    with pytest.raises(openai.InternalServerError):
        await moderation.feed("This will FAIL. ")
        await moderation.finish()
    await remote.aclose()


async def test_blocked_where_the_answer_became_flagged() -> None:
    """A low-scoring mention earlier stays released; the block comes at the phrase that tipped the answer over."""
    text = "The suicide rate fell last year. Kill yourself, loser. More text."
    for pieces in ([text], re.findall(r"\s*\S+", text)):
        stage, moderation, _ = await run_stage(pieces)
        assert stage.text == "The suicide rate fell last year. "
        assert moderation.result.categories["harassment"] and moderation.result.categories["self-harm"]


PHRASES = [
    "how to make a bomb",
    "how to make a bomb shelter",
    "I will kill you",
    "I will kill the process",
    "kill yourself",
    "don't kill yourself",
    "the suicide rate",
    "I want to end my life",
    "I want to die laughing",
    "nobody likes you",
    "I can't tell you how to cook meth at home",
    "how to cook meth at home",
    "all immigrants are vermin",
    "fuck you",
    "they beat him to death",
    "kill the heat",
    "shoot a photo",
    "you are so stupid",
    "you are not stupid",
    "bath bomb",
]
FILLERS = [
    "the",
    "and",
    "then",
    "a",
    "so",
    ".",
    ",",
    "I",
    "you",
    "how",
    "to",
    "make",
    "it",
    "\n",
    "kill",
    "bomb",
    "die",
]


async def test_streamed_like_whole_on_random_answers() -> None:
    """Random answers of rule phrases, near misses and filler, cut at random points: streamed, they are released and
    blocked exactly as when moderated whole."""
    import random

    rng = random.Random(7)
    for _ in range(300):
        words = [rng.choice(PHRASES) if rng.random() < 0.3 else rng.choice(FILLERS) for _ in range(rng.randint(3, 25))]
        text = " ".join(words)
        whole, _, _ = await run_stage([text])
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 15))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        streamed, _, _ = await run_stage(pieces)
        assert (streamed.text, streamed.blocked is None) == (whole.text, whole.blocked is None), pieces
