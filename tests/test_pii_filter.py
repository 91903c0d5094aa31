"""PII redaction (chains.safety.pii) with the real Presidio: each entity, the actions, checksums, ordinary numbers left
alone, the streaming filter against the non-streamed redaction at every split point, and offline operation."""

from __future__ import annotations

import re
import socket

import pytest

from chains.output_stage import OutputStage
from chains.safety.pii import PiiFilter, PiiRedactor, safe_cut
from chains.safety.pii_policy import PATTERN_ENTITIES, PiiPolicy


@pytest.fixture(scope="module")
def redactor() -> PiiRedactor:
    return PiiRedactor(hash_salt="test-salt")


REPLACE = PiiPolicy()

# --------------------------------------------------------------------------- each entity


@pytest.mark.parametrize(
    ("text", "expected", "entity"),
    [
        ("Write to jane.roe@example.org today.", "Write to <EMAIL_ADDRESS> today.", "EMAIL_ADDRESS"),
        ("Call +44 20 7946 0958 now.", "Call <PHONE_NUMBER> now.", "PHONE_NUMBER"),
        ("Call (415) 555-0132 now.", "Call <PHONE_NUMBER> now.", "PHONE_NUMBER"),
        ("Call 415-555-0132 now.", "Call <PHONE_NUMBER> now.", "PHONE_NUMBER"),
        ("Ring +1 415 555 0132 or +49 30 901820.", "Ring <PHONE_NUMBER> or <PHONE_NUMBER>.", "PHONE_NUMBER"),
        ("Call me on 4155550132.", "Call me on <PHONE_NUMBER>.", "PHONE_NUMBER"),  # bare digits, after "call"
        ("Card 4111 1111 1111 1111 is on file.", "Card <CREDIT_CARD> is on file.", "CREDIT_CARD"),
        ("Card 4111111111111111 is on file.", "Card <CREDIT_CARD> is on file.", "CREDIT_CARD"),
        ("Pay GB82 WEST 1234 5698 7654 32 now.", "Pay <IBAN_CODE> now.", "IBAN_CODE"),
        ("Pay DE89370400440532013000 now.", "Pay <IBAN_CODE> now.", "IBAN_CODE"),
        ("Host 192.168.1.20 is down.", "Host <IP_ADDRESS> is down.", "IP_ADDRESS"),
        ("Host 2001:db8:85a3::8a2e:370:7334 is down.", "Host <IP_ADDRESS> is down.", "IP_ADDRESS"),
        ("SSN 219-09-9999 on the form.", "SSN <US_SSN> on the form.", "US_SSN"),
        ("ITIN 912-70-1234 on the form.", "ITIN <US_ITIN> on the form.", "US_ITIN"),
        ("NINO AB 12 34 56 C on the form.", "NINO <UK_NINO> on the form.", "UK_NINO"),
        ("NHS 943 476 5919 on the form.", "NHS <UK_NHS> on the form.", "UK_NHS"),
        ("NIF 12345678Z on the form.", "NIF <ES_NIF> on the form.", "ES_NIF"),
        ("NIE X1234567L on the form.", "NIE <ES_NIE> on the form.", "ES_NIE"),
        ("Codice RSSMRA85T10A562S on the form.", "Codice <IT_FISCAL_CODE> on the form.", "IT_FISCAL_CODE"),
        ("PESEL 44051401359 on the form.", "PESEL <PL_PESEL> on the form.", "PL_PESEL"),
        ("HETU 131052-308T on the form.", "HETU <FI_PERSONAL_IDENTITY_CODE> on the form.", "FI_PERSONAL_IDENTITY_CODE"),
        ("NRIC S1234567D on the form.", "NRIC <SG_NRIC_FIN> on the form.", "SG_NRIC_FIN"),
    ],
)
def test_each_entity_is_replaced(redactor: PiiRedactor, text: str, expected: str, entity: str) -> None:
    result = redactor.redact(text, REPLACE)
    assert result.text == expected
    assert set(result.found) == {entity}


def test_counts_and_only_the_policy_entities(redactor: PiiRedactor) -> None:
    text = "Mail a@example.com or b@example.com, call +44 20 7946 0958."
    assert redactor.redact(text, REPLACE).found == {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1}
    emails_only = redactor.redact(text, PiiPolicy(entities=("EMAIL_ADDRESS",)))
    assert emails_only.text == "Mail <EMAIL_ADDRESS> or <EMAIL_ADDRESS>, call +44 20 7946 0958."
    assert redactor.redact(text, PiiPolicy(entities=())).text == text


def test_mask_keeps_lengths_and_a_cards_last_four(redactor: PiiRedactor) -> None:
    text = "Mail jane.roe@example.org, card 4111 1111 1111 1111, card 4111111111111111, call +44 20 7946 0958."
    result = redactor.redact(text, PiiPolicy(action="mask"))
    assert result.text == (
        "Mail ********************, card **** **** **** 1111, card ************1111, call ****************."
    )
    assert result.found == {"EMAIL_ADDRESS": 1, "CREDIT_CARD": 2, "PHONE_NUMBER": 1}


def test_hash_is_stable_keyed_and_normalised(redactor: PiiRedactor) -> None:
    policy = PiiPolicy(action="hash")
    first = redactor.redact("Mail jane.roe@example.org or call +44 20 7946 0958.", policy).text
    assert re.fullmatch(r"Mail <EMAIL_ADDRESS:[0-9a-f]{8}> or call <PHONE_NUMBER:[0-9a-f]{8}>\.", first)
    # The same values map to the same placeholders: in another answer, another redactor with the same salt, another
    # spelling of the same value.
    assert redactor.redact("Mail jane.roe@example.org or call +44 20 7946 0958.", policy).text == first
    assert (
        PiiRedactor(hash_salt="test-salt").redact("Mail jane.roe@example.org or call +44 20 7946 0958.", policy).text
        == first
    )
    email = re.search(r"<EMAIL_ADDRESS:\w+>", first).group()
    assert redactor.redact("JANE.ROE@EXAMPLE.ORG", policy).text == email
    assert redactor.redact("+44 (20) 7946-0958", policy).text == redactor.redact("+44 20 7946 0958", policy).text
    # Different values, or another deployment's salt: other placeholders.
    assert redactor.redact("Mail john.doe@example.org", policy).text != "Mail " + email
    other = PiiRedactor(hash_salt="another-salt").redact("Mail jane.roe@example.org or call +44 20 7946 0958.", policy)
    assert other.text != first
    assert redactor.pseudonym("EMAIL_ADDRESS", "a@b.co") == redactor.pseudonym("EMAIL_ADDRESS", "A@B.co")


def test_failed_checksums_are_not_redacted(redactor: PiiRedactor) -> None:
    text = "Card 4111 1111 1111 1112 (fails Luhn), IBAN GB83 WEST 1234 5698 7654 32 (fails mod 97), NIF 12345678A."
    result = redactor.redact(text, REPLACE)
    assert result.text == text
    assert result.found == {}


@pytest.mark.parametrize(
    "text",
    [
        "In 1999 we sold 12,345 units at $1,299.99 each, up 15% on 1998.",
        "Upgrade to Python 3.11.2 before 10:30 on 2024-05-01, or at 23:59:59.",
        "Order #123456789 shipped; tracking 1Z999AA10123456784 and invoice 2024-000123.",
        "Between 2019-2021 the population grew from 1,234,567 to 1,345,678.",
        "The timestamp 1700000000 is in November 2023; pi is 3.14159265358979.",
        "ISBN 978-3-16-148410-0, page 1-800, chapters 12-15, 555-0132.",
        "Bind the server to 0.0.0.0 and test it on 127.0.0.1 or ::1.",
        "We bought 4 pizzas for 12 people at 7:30pm; it cost 98.50 EUR.",
        "Thousands separators: '{:,}'.format(1234567890) gives '1,234,567,890'.",
    ],
)
def test_ordinary_numbers_are_left_alone(redactor: PiiRedactor, text: str) -> None:
    assert redactor.redact(text, REPLACE).text == text


# --------------------------------------------------------------------------- the policy


def test_policy_validation_and_round_trip() -> None:
    assert PiiPolicy().entities == PATTERN_ENTITIES
    policy = PiiPolicy.from_dict({"entities": ["EMAIL_ADDRESS", "IBAN_CODE"], "action": "hash"})
    assert policy == PiiPolicy(entities=("EMAIL_ADDRESS", "IBAN_CODE"), action="hash")
    assert PiiPolicy.from_dict(policy.as_dict()) == policy
    assert policy.as_dict() == {"entities": ["EMAIL_ADDRESS", "IBAN_CODE"], "action": "hash"}
    assert PiiPolicy.from_dict({}) == PiiPolicy()
    with pytest.raises(ValueError, match="'EMAIL'"):
        PiiPolicy.from_dict({"entities": ["EMAIL"]})
    with pytest.raises(ValueError, match="'shred'"):
        PiiPolicy.from_dict({"action": "shred"})
    with pytest.raises(ValueError, match="list of entity names"):
        PiiPolicy.from_dict({"entities": "EMAIL_ADDRESS"})
    with pytest.raises(ValueError, match="unknown field"):
        PiiPolicy.from_dict({"entities": [], "mode": "x"})
    with pytest.raises(ValueError, match="expected an object"):
        PiiPolicy.from_dict(["EMAIL_ADDRESS"])  # type: ignore[arg-type]


def test_person_needs_a_spacy_model(redactor: PiiRedactor) -> None:
    assert "PERSON" not in redactor.supported_entities
    assert set(redactor.supported_entities) == set(PATTERN_ENTITIES)
    with pytest.raises(ValueError, match="PERSON"):
        redactor.check(PiiPolicy(entities=("PERSON", "EMAIL_ADDRESS")))
    redactor.check(PiiPolicy())
    with pytest.raises(ValueError, match="en_core_web_sm.*not installed"):
        PiiRedactor(spacy_model="en_core_web_sm")


def test_person_with_a_local_spacy_pipeline(tmp_path) -> None:
    """Names through Presidio's spaCy recognizer, with a pipeline saved here (an entity ruler, no download)."""
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "PERSON", "pattern": "Alice Smith"}])
    nlp.to_disk(tmp_path / "names")
    with_names = PiiRedactor(spacy_model=str(tmp_path / "names"))
    assert "PERSON" in with_names.supported_entities
    policy = PiiPolicy(entities=("PERSON", "EMAIL_ADDRESS"))
    assert with_names.redact("Ask Alice Smith at a@example.com.", policy).text == "Ask <PERSON> at <EMAIL_ADDRESS>."


# --------------------------------------------------------------------------- the streaming filter

STREAM_TEXT = (
    "Contact jane.roe@example.org or +44 20 7946 0958, pay with 4111 1111 1111 1111 into GB82 WEST 1234 5698 7654 32; "
    "the host is 192.168.1.20 (v6 2001:db8:85a3::8a2e:370:7334). Thanks!"
)
PII_VALUES = (
    "jane.roe@example.org",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "GB82 WEST 1234 5698 7654 32",
    "192.168.1.20",
    "2001:db8:85a3::8a2e:370:7334",
)


async def stream(redactor: PiiRedactor, policy: PiiPolicy, pieces: list[str], expected: str | None = None) -> PiiFilter:
    """Feeds the pieces; checks that what was released at every step is a prefix of ``expected``, so no PII (nor part
    of one) was ever released in clear; returns the filter with its output in ``.out``."""
    pii = PiiFilter(redactor, policy)
    out = ""
    for piece in pieces:
        out += await pii.feed(piece)
        if expected is not None:
            assert expected.startswith(out), (pieces, out)
    out += await pii.finish()
    pii.out = out  # type: ignore[attr-defined]
    return pii


@pytest.mark.parametrize("action", ["replace", "mask", "hash"])
async def test_streamed_equals_whole_at_every_split(redactor: PiiRedactor, action: str) -> None:
    policy = PiiPolicy(action=action)
    whole = redactor.redact(STREAM_TEXT, policy)
    assert set(whole.found) == {"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS"}
    assert not any(value in whole.text for value in PII_VALUES)
    text = STREAM_TEXT
    for i in range(len(text) + 1):  # one split point anywhere
        pii = await stream(redactor, policy, [text[:i], text[i:]], whole.text)
        assert pii.out == whole.text, i  # type: ignore[attr-defined]
        assert pii.found == whole.found
    for i in range(0, len(text) + 1, 3):  # two split points, a sample
        for j in range(i, len(text) + 1, 11):
            pii = await stream(redactor, policy, [text[:i], text[i:j], text[j:]], whole.text)
            assert pii.out == whole.text, (i, j)  # type: ignore[attr-defined]
    by_char = await stream(redactor, policy, list(text), whole.text)
    assert by_char.out == whole.text  # type: ignore[attr-defined]
    by_token = await stream(redactor, policy, re.findall(r"\s*\S+", text), whole.text)
    assert by_token.out == whole.text and by_token.found == whole.found  # type: ignore[attr-defined]


async def test_tricky_splits(redactor: PiiRedactor) -> None:
    """A lowercase NINO prefix, a phone in parentheses, an SSN with spaces, a card with dashes, a number after a
    phone context word several words back: streamed like a model (token by token) and cut anywhere."""
    text = (
        "His number is ab 12 34 56 c, ring (415) 555-0132 ext, SSN 219 09 9999, card 4111-1111-1111-1111; "
        "you can call him on 4155550132 today."
    )
    whole = redactor.redact(text, REPLACE)
    assert whole.found == {"UK_NINO": 1, "PHONE_NUMBER": 2, "US_SSN": 1, "CREDIT_CARD": 1}
    for i in range(len(text) + 1):
        pii = await stream(redactor, REPLACE, [text[:i], text[i:]], whole.text)
        assert pii.out == whole.text, i  # type: ignore[attr-defined]
    by_token = await stream(redactor, REPLACE, re.findall(r"\s*\S+", text), whole.text)
    assert by_token.out == whole.text  # type: ignore[attr-defined]


async def test_cards_with_other_separators_and_a_lower_case_iban(redactor: PiiRedactor) -> None:
    """Groups separated by dots, slashes, underscores and no-break spaces; an IBAN in lower case, in one piece:
    redacted whole and at every split; the same digits failing Luhn are left alone."""
    text = (
        "Cards 4111.1111.1111.1111, 5500/0000/0000/0004 and 3782_822463_10005, or 4111\u00a01111\u00a01111\u00a01111; "
        "account gb82west12345698765432, not 4111.1111.1111.1112."
    )
    whole = redactor.redact(text, REPLACE)
    assert whole.text == (
        "Cards <CREDIT_CARD>, <CREDIT_CARD> and <CREDIT_CARD>, or <CREDIT_CARD>; account <IBAN_CODE>, "
        "not 4111.1111.1111.1112."
    )
    for i in range(len(text) + 1):
        pii = await stream(redactor, REPLACE, [text[:i], text[i:]], whole.text)
        assert pii.out == whole.text, i  # type: ignore[attr-defined]
    by_token = await stream(redactor, REPLACE, re.findall(r"\s*\S+", text), whole.text)
    assert by_token.out == whole.text  # type: ignore[attr-defined]


async def test_plain_text_is_released_at_once(redactor: PiiRedactor) -> None:
    pii = PiiFilter(redactor, REPLACE)
    assert await pii.feed("Sure, here is the summary you asked for. ") == "Sure, here is the summary you asked for. "
    assert await pii.feed("It has three parts:\n") == "It has three parts:\n"
    # Only the unfinished last word waits: it could still become an e-mail address.
    assert await pii.feed("First, the intro") == "First, the "
    assert await pii.feed("duction. ") == "introduction. "
    assert await pii.finish() == ""


async def test_holds_little_when_streamed_token_by_token(redactor: PiiRedactor) -> None:
    """Without numbers every token but the last is out as soon as the next one comes; a number waits for the word
    after it (it might go on: "1999 8888 ..."), not longer."""
    pii = PiiFilter(redactor, REPLACE)
    tokens = re.findall(r"\s*\S+", "The quick brown fox jumps over the lazy dog and runs away from the farmer.")
    out = ""
    for index, token in enumerate(tokens):
        out += await pii.feed(token)
        assert out == "".join(tokens[:index]) + (" " if index else "")
    pii = PiiFilter(redactor, REPLACE)
    assert await pii.feed("During") == ""
    assert await pii.feed(" 1999") == "During "
    assert await pii.feed(" the") == "1999 "
    assert await pii.feed(" war") == "the "


async def test_plain_text_never_calls_presidio(redactor: PiiRedactor, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("Presidio was called for text with no digit, @ or colon")

    monkeypatch.setattr(redactor.analyzer, "analyze", fail)
    pii = PiiFilter(redactor, REPLACE)
    tokens = re.findall(r"\s*\S+", "Nothing here needs redaction, not even a single word of it. Really!")
    out = "".join([await pii.feed(token) for token in tokens]) + await pii.finish()
    assert out == "".join(tokens)


async def test_a_long_run_of_numbers_is_not_held_whole(redactor: PiiRedactor) -> None:
    table = " ".join(f"{n:04d}" for n in range(200)) + " and card 4111 1111 1111 1111 done."
    whole = redactor.redact(table, REPLACE)
    assert whole.found == {"CREDIT_CARD": 1}
    pii = PiiFilter(redactor, REPLACE)
    out = fed = ""
    for token in re.findall(r"\s*\S+", table):
        fed += token
        out += await pii.feed(token)
        assert len(fed) - len(out) <= 256  # held: at most MAX_HELD (the placeholder is shorter than the card)
    assert out + await pii.finish() == whole.text


async def test_non_streamed_answer_through_the_output_stage(redactor: PiiRedactor) -> None:
    text = STREAM_TEXT * 4  # long enough for the analysis to run in a worker thread
    stage = OutputStage([PiiFilter(redactor, REPLACE)])
    await stage.feed(text)
    await stage.finish()
    assert stage.text == redactor.redact(text, REPLACE).text
    assert stage.filters[0].found == {k: 4 * v for k, v in redactor.redact(STREAM_TEXT, REPLACE).found.items()}


def test_safe_cut() -> None:
    assert safe_cut("plain words ") == len("plain words ")
    assert safe_cut("plain words") == len("plain ")
    assert safe_cut("call +44 20 7946 ") == len("call ")
    assert safe_cut("pay GB82 WEST ") == len("pay ")
    assert safe_cut("nino ab 12 ") == len("nino ")
    assert safe_cut("it is ") == len("it ")  # "is" may be a NINO prefix ("is 12 34 56 c"): one word more
    assert safe_cut("in 1999 the ") == len("in 1999 the ")


# --------------------------------------------------------------------------- offline


def test_presidio_never_touches_the_network(monkeypatch) -> None:
    """Built and run with every outgoing connection and name lookup refused and recorded: nothing is attempted (the
    default tldextract would try the public suffix list, spaCy's loader a model download)."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    offline = PiiRedactor(hash_salt="x")
    result = offline.redact("Mail someone@example.co.uk or jane@mail.example.com, host 10.1.2.3.", REPLACE)
    assert result.text == "Mail <EMAIL_ADDRESS> or <EMAIL_ADDRESS>, host <IP_ADDRESS>."
    assert attempts == []


FUZZ_VALUES = [
    "jane.roe@example.org", "+44 20 7946 0958", "(415) 555-0132", "415.555.0132", "415 555 0132 ext. 12",
    "4111 1111 1111 1111", "4111-1111-1111-1111", "GB82 WEST 1234 5698 7654 32", "DE89370400440532013000",
    "192.168.1.20", "2001:db8:85a3::8a2e:370:7334", "[2001:db8::1]:8080", "219-09-9999", "AB 12 34 56 C", "ab123456c",
    "943 476 5919", "12345678Z", "RSSMRA85T10A562S", "020 7946 0958", "4155550132", "user@192.168.1.20",
    "1999", "3.11.2", "$1,299.99", "10:30", "2024-05-01", "#123456789", "1700000000", "0.0.0.0",
]  # fmt: skip
FUZZ_WORDS = [
    "call", "me", "at", "or", "the", "is", "number", "IBAN", "card", "(", ")", ",", ".", "in", "a", "I", "NINO", "pay",
    "with", "version", "\n", "-", "+", ":", "WEST", "C", "ext.", "x", "#", "Tel:", "[", "]", "mailto:", "\t",
]  # fmt: skip


async def test_streamed_equals_whole_on_random_answers(redactor: PiiRedactor) -> None:
    """PII, near misses and filler glued at random (sometimes without a space), cut at random points."""
    import random

    rng = random.Random(11)
    for _ in range(300):
        text = ""
        for _ in range(rng.randint(3, 14)):
            part = rng.choice(FUZZ_VALUES) if rng.random() < 0.35 else rng.choice(FUZZ_WORDS)
            text += ("" if not text or rng.random() < 0.08 else " ") + part
        whole = redactor.redact(text, REPLACE)
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 12))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        pii = await stream(redactor, REPLACE, pieces, whole.text)
        assert pii.out == whole.text, pieces  # type: ignore[attr-defined]


async def test_an_empty_policy_passes_text_through(redactor: PiiRedactor) -> None:
    pii = PiiFilter(redactor, PiiPolicy(entities=()))
    assert await pii.feed("Mail jane") == "Mail jane"
    assert await pii.feed("@example.org") == "@example.org"
    assert await pii.finish() == ""
