"""Moderation: OpenAI's categories, a local rule-based checker, a checker that calls an OpenAI-compatible moderation
endpoint, and the output filter that blocks an answer (finish reason ``content_filter``) as it streams.

The local checker needs no model: weighted phrase rules per category (phrases, not single ambiguous words: "kill the
heat", "this joke killed me", "shoot a photo" and history of wars score nothing). It is a cheap first line, not a
classifier; a deployment that needs better recall points ``OpenAIModerationChecker`` at a real moderation model.
Behaviour worth knowing:

* a category's score is the noisy-or of the distinct rules that matched (a rule counts once, however often it
  matches), raised to the highest score of its subcategories (``self-harm/intent`` -> ``self-harm``); flagged when a
  score reaches its threshold (0.5 by default);
* bare mentions of suicide or self-harm (prevention hotlines, statistics, medical questions) score ``self-harm`` 0.15
  and are never flagged on their own; first-person intent, encouragement and method questions are;
* rules that a refusal or a warning would quote ("I can't tell you how to make a bomb", "never mix bleach and ammonia
  to make ...") score a fifth when a negation comes earlier in the same sentence;
* "child sexual abuse" as a topic (reporting, prevention) is not flagged; sexual content involving minors is.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import regex

from chains.output_stage import OutputBlocked

CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
PARENTS = {category: category.split("/")[0] for category in CATEGORIES if "/" in category}
DEFAULT_THRESHOLD = 0.5

Granularity = Literal["phrase", "sentence"]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ModerationResult:
    flagged: bool
    categories: dict[str, bool]  # all 13 categories
    category_scores: dict[str, float]  # all 13, in [0, 1]
    applied_input_types: dict[str, list[str]] | None = None

    @classmethod
    def clean(cls) -> ModerationResult:
        return cls(False, dict.fromkeys(CATEGORIES, False), dict.fromkeys(CATEGORIES, 0.0))

    @property
    def flagged_categories(self) -> list[str]:
        return [category for category in CATEGORIES if self.categories.get(category)]

    def as_openai(self) -> dict[str, Any]:
        """One entry of the ``results`` list of OpenAI's moderation response."""
        applied = self.applied_input_types or {}
        return {
            "flagged": self.flagged,
            "categories": {category: bool(self.categories.get(category)) for category in CATEGORIES},
            "category_scores": {category: float(self.category_scores.get(category, 0.0)) for category in CATEGORIES},
            "category_applied_input_types": {
                category: list(applied.get(category, ["text"])) for category in CATEGORIES
            },
        }


def worst(results: Sequence[ModerationResult]) -> ModerationResult | None:
    """Several results as one: any flag, the highest score per category."""
    if not results:
        return None
    if len(results) == 1:
        return results[0]
    return ModerationResult(
        flagged=any(result.flagged for result in results),
        categories={c: any(r.categories.get(c, False) for r in results) for c in CATEGORIES},
        category_scores={c: max(r.category_scores.get(c, 0.0) for r in results) for c in CATEGORIES},
        applied_input_types=results[0].applied_input_types,
    )


class ModerationChecker(Protocol):
    name: str  # "local", or the moderation route's model name
    granularity: Granularity  # how ModerationFilter segments a streamed answer for it

    async def check(self, texts: Sequence[str]) -> list[ModerationResult]: ...


# --------------------------------------------------------------------------- local rules

_NEGATION = re.compile(
    r"(?i)\b(?:can't|cannot|can not|won't|will not|wouldn't|would not|don't|do not|never|refuse|unable to|not able to|"
    r"not going to|not allowed|not something|illegal|against the law|prohibited|shouldn't|should not|must not|"
    r"no one should|avoid)\b"
)
NEGATION_FACTOR = 0.2
NEGATION_CHARS = 80  # how far back in the same sentence a negation counts

_YOU = r"(?:you|u|ya)"
_PERSON = (
    r"(?:you|u|him|her|them|everyone|everybody|someone|somebody|people|your (?:family|kids|children|wife|husband))"
)
_GROUPS = (
    r"(?:jews|jewish people|muslims|christians|hindus|sikhs|atheists|blacks|black people|whites|white people|asians|"
    r"arabs|latinos|hispanics|mexicans|africans|immigrants|refugees|gays|gay people|lesbians|homosexuals|"
    r"trans people|transgender people|women|men|disabled people|gypsies)"
)
_DEHUMANISING = (
    r"(?:animals|vermin|parasites|rats|cockroaches|subhuman|not (?:even )?human|a (?:disease|plague|cancer|virus)|"
    r"inferior|savages|scum|filth|trash|garbage|evil)"
)
_KILL = r"(?:kill|murder|exterminate|slaughter|lynch|gas|massacre|wipe out|execute|eradicate|shoot)"
_DRUGS = (
    r"(?:meth|methamphetamine|crystal meth|cocaine|crack cocaine|crack|heroin|fentanyl|lsd|mdma|ecstasy|ghb|pcp|"
    r"ketamine|dmt|amphetamines?)"
)
_WEAPONS = (
    r"(?:pipe bomb|dirty bomb|nuclear bomb|nail bomb|car bomb|(?<!bath |seed |photo |glitter )bomb"
    r"(?!\s+(?:shelter|squad|disposal|cyclone|threat|calorimeter|drop))|explosives?|ied|molotov(?: cocktail)?|napalm|"
    r"thermite|grenade|detonator|silencer|suppressor|ghost gun|untraceable (?:gun|firearm)|zip gun|"
    r"nerve (?:agent|gas)|sarin|ricin|mustard gas|chlorine gas|poison gas|bioweapon|biological weapon|chemical weapon)"
)
_HOW = r"(?:how (?:do (?:i|you|we)|can (?:i|you|we)|to|would (?:i|you)|should i)|ways to|the best way to|steps to)"
_MINOR = (
    r"(?:child|children|kids?|minors?|underage|under-age|preteens?|pre-teens?|toddlers?|infants?|little (?:girls?|boys?)|"
    r"schoolgirls?|schoolboys?|(?:[1-9]|1[0-7])[- ]?(?:year|yr)[- ]?olds?|young (?:girls?|boys?))"
)
_I_INTENT = (
    r"\bi(?:'m going to|'m gonna| am going to| am gonna|'ll| will| want to| wanna| plan to|'m planning to|"
    r" am planning to| intend to|'ve decided to| have decided to| need to| just want to| really want to|'m about to|"
    r" am about to)"
)


@dataclass(frozen=True)
class Rule:
    """A phrase pattern and what it scores per category; ``negatable``: a refusal or warning may quote it."""

    pattern: str
    scores: Mapping[str, float]
    negatable: bool = False


RULES: tuple[Rule, ...] = (
    # harassment
    Rule(
        r"\byou(?:'re| are) (?:(?:such|so|a|an|the|just|nothing but|really|fucking|an absolute|a complete|a total) )*"
        r"(?:stupid|idiot|moron|imbecile|retard(?:ed)?|worthless|pathetic|disgusting|loser|waste of (?:space|air|oxygen)|"
        r"piece of (?:shit|garbage|trash|crap)|ugly|dumb|useless|scum|trash|garbage|bitch|whore|slut|cunt|bastard|"
        r"asshole|dickhead)\b",
        {"harassment": 0.75},
    ),
    Rule(
        rf"\b{_YOU} (?:stupid|dumb|fucking|worthless|pathetic|ugly|fat) (?:idiot|moron|bitch|bastard|asshole|cunt|"
        r"loser|piece of shit|retard|freak|whore|slut)\b",
        {"harassment": 0.85},
    ),
    Rule(rf"\b(?:fuck|screw) (?:{_YOU}|off)\b", {"harassment": 0.6}),
    Rule(
        r"\b(?:nobody|no one) (?:likes|loves|wants|cares about) you\b|\beveryone hates you\b|"
        r"\bthe world (?:would be|is) better (?:off )?without you\b",
        {"harassment": 0.6, "self-harm": 0.2},
    ),
    Rule(
        r"\b(?<!don't )(?<!do not )(?<!never )(?<!not )(?:kill yourself|kys|go (?:and )?die|you should (?:just )?die|"
        r"i hope you die|go hang yourself|drink bleach)\b(?!\s+(?:laughing|working|with work|over)\b)",
        {"harassment": 0.85, "harassment/threatening": 0.6, "self-harm": 0.6},
    ),
    # harassment/threatening
    Rule(
        r"\bi(?:'ll| will| shall|'m going to|'m gonna| am going to| am gonna| gonna| going to) (?:fucking )?"
        rf"(?:kill|murder|hurt|stab|shoot|strangle|rape|slit the throat of|break the legs of) {_PERSON}\b",
        {"harassment/threatening": 0.85, "harassment": 0.6, "violence": 0.7},
    ),
    Rule(
        r"\bi(?:'ll| will|'m going to|'m gonna| am going to) beat (?:you|him|her|them) "
        r"(?:up|to death|senseless|to a pulp|black and blue)\b",
        {"harassment/threatening": 0.8, "harassment": 0.6, "violence": 0.7},
    ),
    Rule(
        r"\byou(?:'re| are) (?:going to|gonna) (?:die|bleed|suffer)\b|\byour days are numbered\b",
        {"harassment/threatening": 0.65, "harassment": 0.5, "violence": 0.4},
    ),
    Rule(
        r"\bi know where you (?:live|sleep|work)\b|\b(?:i|we)(?:'ll| will) (?:find|hunt) you(?: down)?\b",
        {"harassment/threatening": 0.6, "harassment": 0.5},
    ),
    Rule(r"\b(?:better )?watch your back\b", {"harassment/threatening": 0.35, "harassment": 0.3}),
    # hate
    Rule(
        rf"\b(?:(?:all|those|these|the|most|fucking) )*{_GROUPS} (?:are|is|r) "
        rf"(?:(?:all|just|nothing but|a bunch of|like|literally|basically) )*{_DEHUMANISING}\b",
        {"hate": 0.8, "harassment": 0.4},
    ),
    Rule(
        r"\b(?:n[i1!]gg(?:er|a|az)s?|f[a@]gg?[o0]ts?|k[i1]kes?|wetbacks?|tr[a@]nn(?:y|ies)|r[a@]gheads?|"
        r"towelheads?|sand ?n[i1]gg(?:er|a)s?)\b",
        {"hate": 0.7, "harassment": 0.5},
    ),
    Rule(r"\b(?:heil hitler|sieg heil|white power!|1488)\b", {"hate": 0.7}),
    # hate/threatening
    Rule(
        r"\b(?:(?:we|you|i|let's|lets|should|must|need to|have to|gonna|going to|time to|want to|wanna|will|'ll)\s+"
        rf"|^|(?<=[.!?;:]\s)){_KILL}\s+(?:(?:all|every|the|those|these|fucking)\s+)*{_GROUPS}\b",
        {"hate/threatening": 0.85, "hate": 0.8, "violence": 0.6},
    ),
    Rule(
        rf"\b{_GROUPS} (?:should|must|need to|deserve to|ought to) (?:all )?(?:die|be (?:killed|exterminated|gassed|"
        r"shot|hanged|lynched|wiped out|eradicated|burned))\b|\bgas the jews\b",
        {"hate/threatening": 0.85, "hate": 0.8, "violence": 0.5},
    ),
    # illicit
    Rule(
        rf"\b{_HOW} (?:make|cook|synthesi[sz]e|produce|manufacture|brew|extract) (?:some |my own |homemade )?{_DRUGS}\b",
        {"illicit": 0.8},
        negatable=True,
    ),
    Rule(
        rf"\bto (?:make|cook|synthesi[sz]e|produce|manufacture) {_DRUGS},? (?:you(?:'ll| will)? need|first|start by|"
        r"begin by|combine|mix|dissolve|heat)\b|"
        rf"\b(?:synthesi[sz]e|cook|manufacture) {_DRUGS} (?:at home|in (?:a|your) (?:home )?(?:lab|kitchen|garage))\b",
        {"illicit": 0.85},
        negatable=True,
    ),
    Rule(
        rf"\b(?:buy|order|purchase|score) {_DRUGS} (?:online|on the dark ?web|without (?:a )?prescription)\b",
        {"illicit": 0.7},
        negatable=True,
    ),
    Rule(
        rf"\b{_HOW} (?:launder money|hack (?:into )?(?:someone's|somebody's|a|an|my (?:ex|girlfriend|boyfriend|wife|"
        r"husband|neighbou?r)'s) (?:account|email|phone|computer|instagram|facebook|wifi|bank account)|"
        r"steal (?:someone's |somebody's |a |an )?(?:identity|identities|credit cards?|cars?|passwords?)|shoplift|"
        r"forge (?:a |an )?(?:check|cheque|signature|passport|document|id)|hotwire a car|evade (?:taxes|the police)|"
        r"make (?:a )?(?:fake|counterfeit) (?:id|passport|money|bills|banknotes))\b",
        {"illicit": 0.75},
        negatable=True,
    ),
    Rule(
        r"\b(?:write|create|code|build|make) (?:a |an |some |me a |me an )?(?:working )?(?:ransomware|keylogger|"
        r"malware|computer virus|trojan|botnet|credit card skimmer)\b",
        {"illicit": 0.7},
        negatable=True,
    ),
    # illicit/violent
    Rule(
        rf"\b{_HOW} (?:make|build|assemble|construct|create|put together|3d print|print) "
        rf"(?:a |an |some |my own |your own |homemade |a homemade )?{_WEAPONS}",
        {"illicit/violent": 0.85, "illicit": 0.7, "violence": 0.4},
        negatable=True,
    ),
    Rule(
        rf"\bto (?:make|build|assemble|construct) (?:a |an |your own |some )?{_WEAPONS},? (?:you(?:'ll| will)? need|"
        r"first|start by|begin by|take|combine|mix|fill|pack)\b",
        {"illicit/violent": 0.9, "illicit": 0.7, "violence": 0.4},
        negatable=True,
    ),
    Rule(
        r"\b(?:mix|combine) (?:bleach and ammonia|ammonia and bleach) to (?:make|create|produce|get)\b",
        {"illicit/violent": 0.7, "illicit": 0.5},
        negatable=True,
    ),
    Rule(
        r"\bhow (?:to|do i|can i|would i|should i) (?:poison|kill|murder|strangle|stab|shoot) (?:someone|somebody|"
        r"a person|people|my (?:wife|husband|boss|neighbou?r|mother|father|mom|dad|teacher|ex|girlfriend|boyfriend|"
        r"brother|sister|roommate))\b|"
        r"\bhow (?:to|do i|can i) (?:dispose of|get rid of|hide) (?:a|the) (?:dead )?body\b|"
        r"\b(?:untraceable|undetectable) poisons?\b",
        {"illicit/violent": 0.85, "illicit": 0.6, "violence": 0.75},
        negatable=True,
    ),
    # self-harm
    Rule(
        rf"{_I_INTENT}\s+(?:just\s+)?(?:kill myself|end my (?:own )?life|end it all|commit suicide|take my (?:own )?life|"
        r"hang myself|slit my wrists|overdose|cut myself|hurt myself|"
        r"die(?!\s+(?:laughing|of|in|happy|peacefully|old|rich|on|for|with|trying|a|at)\b))\b",
        {"self-harm": 0.85, "self-harm/intent": 0.85},
    ),
    Rule(
        r"\bi (?:don't|do not) want to (?:live|be alive|exist|wake up) (?:anymore|any more)\b|"
        r"\b(?:suicide|killing myself|ending it|death) (?:is|seems like|feels like) (?:the|my) only "
        r"(?:way out|option|answer|solution|escape)\b",
        {"self-harm": 0.85, "self-harm/intent": 0.8},
    ),
    Rule(
        r"\b(?:i've been|i have been|i keep|i'm|i am|i started) (?:cutting|burning|hurting|harming|starving) myself\b",
        {"self-harm": 0.8, "self-harm/intent": 0.6},
    ),
    Rule(
        r"\b(?:how (?:to|do i|can i|would i|should i)|(?:the )?(?:best|easiest|quickest|fastest|most painless|"
        r"least painful|surest) (?:way|ways|method|methods) to|ways to) (?:kill (?:myself|yourself|oneself)|"
        r"commit suicide|end (?:my|your|one's) (?:own )?life|hang (?:myself|yourself)|slit (?:my|your) wrists|"
        r"self[- ]harm|cut (?:myself|yourself)(?!\s+(?:a|an|some|off|free|slack|loose|short)\b)|die painlessly)\b|"
        r"\bhow (?:much|many) \w+(?: \w+)? (?:to|would|will|does it take to) (?:kill (?:myself|me)|overdose)\b",
        {"self-harm/instructions": 0.85, "self-harm": 0.8},
        negatable=True,
    ),
    Rule(r"\b(?:suicid(?:e|al)|self[- ]harm(?:ing)?|self[- ]injury)\b", {"self-harm": 0.15}),
    # sexual
    Rule(
        r"\b(?:suck(?:ed|ing|s)?|lick(?:ed|ing|s)?|strok(?:e|ed|es|ing)|fondl(?:e|ed|es|ing)|finger(?:ed|ing|s)?) "
        r"(?:his|her|my|your|their) (?:cock|dick|penis|pussy|clit|clitoris|nipples?|tits|breasts|balls|vagina)\b",
        {"sexual": 0.85},
    ),
    Rule(
        r"\b(?:fuck(?:ed|ing|s)?|screw(?:ed|ing)?) (?:her|him|me|you|them) (?:hard|harder|deep|deeper|senseless|raw|"
        r"from behind|all night)\b|"
        r"\b(?:his|her|my|your) (?:hard|throbbing|erect|swollen|wet|dripping) (?:cock|dick|penis|shaft|pussy|clit)\b|"
        r"\b(?:cum|came|ejaculated?) (?:in|inside|on|all over) (?:her|his|my|your|me|him)\b",
        {"sexual": 0.85},
    ),
    Rule(r"\b(?:blowjobs?|handjobs?|rimjobs?|deepthroat(?:ing|ed)?|creampies?|gangbangs?|bukkake)\b", {"sexual": 0.75}),
    Rule(
        r"\b(?:explicit|graphic|erotic|steamy|dirty|x-rated) (?:sex|sexual|erotic) (?:scene|story|content|roleplay|"
        r"fantasy|chat)\b",
        {"sexual": 0.6},
        negatable=True,
    ),
    Rule(
        r"\b(?:porn(?:o|ographic)?|xxx) (?:videos?|movies?|sites?|stories|story|pics|pictures|images)\b",
        {"sexual": 0.4},
    ),
    Rule(r"\bhave sex with\b|\b(?:naked|nude) (?:photos?|pictures?|pics|selfies?)\b", {"sexual": 0.3}),
    # sexual/minors
    Rule(
        r"\b(?:child|kiddie|kiddy|underage|preteen|pre-teen|toddler|infant|minor|teen|jailbait)\s*"
        r"(?:porn(?:o|ography)?|erotica|nudes|xxx)\b",
        {"sexual/minors": 0.95, "sexual": 0.8},
        negatable=True,
    ),
    Rule(
        r"\b(?:sex|sexual|erotic|naked|nude|explicit|sexy|lewd|porn|pornographic)\s+(?:\w+\s+){0,2}?"
        r"(?:photos?|pictures?|pics|images?|videos?|stories|story|roleplay|scenes?|content|acts?|relations|"
        r"intercourse)\s+(?:of|with|involving|featuring|about)\s+(?:a |an |the |my |your |some )?"
        rf"(?:young |little |cute |underage )?{_MINOR}\b|"
        rf"\b(?:have|having|had) sex with (?:a |an |my |the )?(?:young |little )?{_MINOR}\b",
        {"sexual/minors": 0.9, "sexual": 0.8},
        negatable=True,
    ),
    Rule(r"\bchild sexual abuse\b|\bsexual abuse of (?:a )?(?:child|children|minors)\b", {"sexual/minors": 0.3}),
    # violence
    Rule(
        r"\b(?:i|we)(?:'ll| will|'m going to| am going to|'re going to| are going to) (?:shoot up|bomb|attack|"
        r"blow up) (?:the|a|this|my|our) (?:school|church|mosque|synagogue|temple|office|mall|crowd|concert|"
        r"hospital|building|station|airport|class)\b",
        {"violence": 0.9, "harassment/threatening": 0.5, "illicit/violent": 0.6},
    ),
    Rule(
        r"\bbeat (?:him|her|them|someone|somebody|the (?:man|woman|guy|kid|child|dog)) to death\b|"
        r"\b(?:tortur(?:e|ed|ing)|mutilat(?:e|ed|ing)) (?:him|her|them|animals|the (?:animal|dog|cat|prisoner|victim))\b|"
        r"\bshoot (?:up )?(?:everyone|everybody|all of them|as many (?:people )?as)\b",
        {"violence": 0.75},
    ),
    # violence/graphic
    Rule(
        r"\b(?:blood|guts|entrails|intestines|brains|brain matter) (?:spill(?:ed|ing)?|splatter(?:ed|ing)?|"
        r"spray(?:ed|ing)?|pour(?:ed|ing)?|gush(?:ed|ing)?|ooz(?:ed|ing)) (?:out|everywhere|across|over|from|onto)\b|"
        r"\b(?:ripped|tore|torn|gouged|cut|pulled) (?:out )?(?:his|her|their) (?:eyes|guts|heart|throat|intestines|"
        r"entrails|tongue)\b|"
        r"\b(?:his|her|their) (?:skull|head|face) (?:was |were )?(?:crushed|smashed|split open|caved in|blown off)\b",
        {"violence/graphic": 0.85, "violence": 0.7},
    ),
    Rule(
        r"\b(?:severed|decapitated|dismembered|disembowell?ed|mutilated|flayed|charred) (?:body|bodies|head|heads|"
        r"corpse|corpses|limbs|remains)\b|\b(?:body|corpse) was (?:dismembered|mutilated|disembowell?ed|flayed)\b",
        {"violence/graphic": 0.7, "violence": 0.55},
    ),
)

LOOKBACK_CHARS = 100  # text before a scan's start that rules may look at (lookbehinds, negations: NEGATION_CHARS)
INLINE_CHARS = 2000  # longer texts are scanned in a worker thread (~2 µs a character: ms of event loop otherwise)
_APOSTROPHES = str.maketrans("\u2019\u2018\u02bc", "'''")  # same length: positions stay
_NEXT_WORD = regex.compile(r"\W*\w+\W")  # a complete word after a match: its lookaheads are decided
_SENTENCE_START = re.compile(r"[.!?\n][^.!?\n]*$")


@dataclass(frozen=True)
class RuleMatch:
    rule: int  # index in the checker's rules
    start: int
    end: int
    scores: Mapping[str, float]  # after the negation discount


@dataclass
class Scan:
    """What one pass over text found: matches settled (nothing after them can change them) and where the earliest
    unsettled one (partial at the end, or complete without a following word yet) starts, None if none."""

    matches: list[RuleMatch] = field(default_factory=list)
    pending_from: int | None = None


class LocalModerationChecker:
    """Weighted phrase rules per category (see the module docstring): no model, tens of µs per sentence."""

    name = "local"
    granularity: Granularity = "phrase"

    def __init__(self, rules: Sequence[Rule] = RULES, thresholds: Mapping[str, float] | None = None) -> None:
        self.rules = tuple(rules)
        self.thresholds = {category: DEFAULT_THRESHOLD for category in CATEGORIES} | dict(thresholds or {})
        unknown = {c for rule in self.rules for c in rule.scores} | set(self.thresholds)
        unknown -= set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown moderation categories: {', '.join(sorted(unknown))}")
        flags = regex.IGNORECASE | regex.V0
        self._patterns = [regex.compile(rule.pattern, flags) for rule in self.rules]
        # One pattern for the common case: nothing in the text can match (or start to match) any rule. Rules all
        # start at a word boundary; testing it once before the alternatives makes the search twice as fast.
        if not all(rule.pattern.startswith(r"\b") for rule in self.rules):
            raise ValueError(r"moderation rules must start with \b")
        self._any = regex.compile(r"\b(?:" + "|".join(f"(?:{rule.pattern[2:]})" for rule in self.rules) + ")", flags)

    async def check(self, texts: Sequence[str]) -> list[ModerationResult]:
        if sum(len(text) for text in texts) > INLINE_CHARS:
            return await asyncio.to_thread(self.check_now, texts)
        return self.check_now(texts)

    def check_now(self, texts: Sequence[str]) -> list[ModerationResult]:
        return [self.score(self.scan(text, final=True).matches) for text in texts]

    def scan(self, text: str, start: int = 0, *, final: bool) -> Scan:
        """Rule matches in ``text`` that start at or after ``start`` (lookbehinds see the text before it). Unless
        ``final``, a match at the end of the text is not settled: more text may still complete or undo it."""
        # Only the text from ``start`` is searched, with enough before it for lookbehinds and negations: a stream's
        # answer is scanned again at every piece, and the regex engine copies what it is given.
        base = max(0, start - LOOKBACK_CHARS)
        text = text[base:].translate(_APOSTROPHES)
        found = Scan()
        position = start - base
        # The combined pattern finds the leftmost place where any rule matches or may still match; only there are
        # the rules tried one by one, anchored.
        while (candidate := self._any.search(text, position, partial=not final)) is not None:
            at = candidate.start()
            if at == len(text):
                break  # an empty partial match at the very end: nothing has started
            if candidate.partial:
                found.pending_from = base + at
                break
            for index, pattern in enumerate(self._patterns):
                match = pattern.match(text, at, partial=not final)
                if match is None:
                    continue
                if match.partial or not (final or _NEXT_WORD.match(text, match.end())):
                    found.pending_from = base + at  # more text may still complete (or undo) it
                else:
                    scores = self._scores(index, text, match)
                    found.matches.append(RuleMatch(index, base + at, base + match.end(), scores))
            if found.pending_from is not None:
                break
            position = at + 1
        return found

    def _scores(self, index: int, text: str, match: regex.Match) -> Mapping[str, float]:
        rule = self.rules[index]
        if rule.negatable:
            before = text[max(0, match.start() - NEGATION_CHARS) : match.start()]
            sentence = _SENTENCE_START.search(before)
            if _NEGATION.search(before[sentence.start() + 1 :] if sentence else before):
                return {category: score * NEGATION_FACTOR for category, score in rule.scores.items()}
        return rule.scores

    def score(self, matches: Sequence[RuleMatch]) -> ModerationResult:
        """Category scores: per category, the noisy-or over distinct rules (each rule's best match), then each
        parent raised to its subcategories' best score; flags by threshold."""
        best: dict[tuple[int, str], float] = {}
        for match in matches:
            for category, value in match.scores.items():
                key = (match.rule, category)
                best[key] = max(best.get(key, 0.0), value)
        miss = dict.fromkeys(CATEGORIES, 1.0)
        for (_, category), value in best.items():
            miss[category] *= 1.0 - value
        scores = {category: round(1.0 - miss[category], 4) for category in CATEGORIES}
        for child, parent in PARENTS.items():
            scores[parent] = max(scores[parent], scores[child])
        flags = {category: scores[category] >= self.thresholds[category] for category in CATEGORIES}
        return ModerationResult(any(flags.values()), flags, scores)


# --------------------------------------------------------------------------- remote checker


class ModerationError(RuntimeError):
    """The moderation endpoint answered, but not with one result per input."""


class OpenAIModerationChecker:
    """An OpenAI-compatible ``/moderations`` endpoint through the ``openai`` SDK. Failures raise (the SDK's
    ``openai.APIError`` family, or ``ModerationError``): callers decide (the API answers 503)."""

    granularity: Granularity = "sentence"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str = "omni-moderation-latest",
        *,
        timeout: float = 10.0,
        max_retries: int = 1,
        segment_chars: int = 200,
    ) -> None:
        from openai import AsyncOpenAI

        self.name = model
        self.model = model
        self.segment_chars = segment_chars
        self.client = AsyncOpenAI(
            base_url=base_url, api_key=api_key or "unused", timeout=timeout, max_retries=max_retries
        )

    async def check(self, texts: Sequence[str]) -> list[ModerationResult]:
        if not texts:
            return []
        response = await self.client.moderations.create(input=list(texts), model=self.model)
        if len(response.results) != len(texts):
            raise ModerationError(f"moderation returned {len(response.results)} results for {len(texts)} inputs")
        return [_from_openai(result.model_dump(by_alias=True)) for result in response.results]

    async def aclose(self) -> None:
        await self.client.close()


def _from_openai(data: Mapping[str, Any]) -> ModerationResult:
    categories = data.get("categories") or {}
    scores = data.get("category_scores") or {}
    applied = data.get("category_applied_input_types") or None
    return ModerationResult(
        flagged=bool(data.get("flagged")),
        categories={category: bool(categories.get(category)) for category in CATEGORIES},
        category_scores={category: float(scores.get(category) or 0.0) for category in CATEGORIES},
        applied_input_types=(
            {category: list(applied.get(category) or ["text"]) for category in CATEGORIES} if applied else None
        ),
    )


# --------------------------------------------------------------------------- output filter

_SEGMENT_END = re.compile(r"[.!?][\"')\]]*\s+|\n\s*")


class ModerationFilter:
    """An output filter (``chains.output_stage``) that blocks one answer when its checker flags it.

    What it has released cannot be taken back, so it holds what it may still block, at the checker's granularity:

    * ``phrase`` (the local checker, cheap): each piece is scanned as it comes; only text a rule may still match is
      held (the start of a phrase, "how to make a", or a match whose next word has not come). A flagged answer is
      blocked at the start of the phrase that flagged it: the text before it is released, nothing after.
    * ``sentence`` (a remote checker, slow): text is checked a segment at a time (up to a sentence end, or about
      ``checker.segment_chars``), the checks running in the background while the answer streams on; a segment is
      released when its check (and those of the segments before it) came back clean.

    ``result`` is the answer's worst result so far, for the caller to report.
    """

    def __init__(self, checker: ModerationChecker) -> None:
        self.checker = checker
        self.result: ModerationResult | None = None
        self._phrase = getattr(checker, "granularity", "sentence") == "phrase" and hasattr(checker, "scan")
        self._text = ""  # phrase mode: the whole answer so far
        self._released = 0
        self._matches: dict[tuple[int, int], RuleMatch] = {}
        self._pending = ""  # sentence mode: not yet sent for checking
        self._inflight: deque[tuple[list[str], asyncio.Task[list[ModerationResult]]]] = deque()

    async def feed(self, text: str) -> str:
        if self._phrase:
            return await self._feed_phrase(text, final=False)
        self._pending += text
        cut = self._segment_cut(self._pending)
        if cut:
            self._send(self._pending[:cut])
            self._pending = self._pending[cut:]
        return await self._collect(wait=False)

    async def finish(self) -> str:
        if self._phrase:
            return await self._feed_phrase("", final=True)
        if self._pending:
            self._send(self._pending)
            self._pending = ""
        return await self._collect(wait=True)

    # ---- phrase mode (local rules)

    async def _feed_phrase(self, text: str, *, final: bool) -> str:
        checker: LocalModerationChecker = self.checker  # type: ignore[assignment]
        self._text += text
        # Whatever starts before the released point was settled before (or it would have been held): scan from there.
        if len(self._text) - self._released > INLINE_CHARS:
            scan = await asyncio.to_thread(checker.scan, self._text, self._released, final=final)
        else:
            scan = checker.scan(self._text, self._released, final=final)
        new = sorted(
            (m for m in scan.matches if (m.rule, m.start) not in self._matches), key=lambda m: (m.start, m.end)
        )
        if self.result is None:
            self.result = checker.score([])
        # In the order of the text: the answer is blocked where the match that made it flagged starts.
        for match in new:
            self._matches[match.rule, match.start] = match
            self.result = checker.score(list(self._matches.values()))
            if self.result.flagged:
                self._block(self._text[self._released : max(match.start, self._released)])
        cut = len(self._text) if final or scan.pending_from is None else max(scan.pending_from, self._released)
        released, self._released = self._text[self._released : cut], cut
        return released

    # ---- sentence mode (a remote checker)

    def _segment_cut(self, text: str) -> int:
        ends = [m.end() for m in _SEGMENT_END.finditer(text)]
        if ends:
            return ends[-1]
        limit = getattr(self.checker, "segment_chars", 200)
        if len(text) >= limit:
            space = text.rfind(" ", 0, len(text))
            return space + 1 if space > 0 else len(text)
        return 0

    def _send(self, segment: str) -> None:
        """Start checking a segment, one input per sentence (so a flagged one releases those before it)."""
        sentences = [s for s in _split_sentences(segment) if s]
        task = asyncio.ensure_future(self.checker.check([s.strip() or s for s in sentences]))
        task.add_done_callback(_retrieve)
        self._inflight.append((sentences, task))

    async def _collect(self, *, wait: bool) -> str:
        released: list[str] = []
        try:
            while self._inflight and (wait or self._inflight[0][1].done()):
                sentences, task = self._inflight.popleft()
                results = await task
                for sentence, result in zip(sentences, results):
                    self.result = worst([self.result, result] if self.result else [result])
                    if result.flagged:
                        self._block("".join(released))
                    released.append(sentence)
        except BaseException:
            self._cancel()
            raise
        return "".join(released)

    def _block(self, release: str) -> None:
        self._cancel()
        categories = ", ".join(self.result.flagged_categories) if self.result else ""
        raise OutputBlocked(release, reason=f"moderation ({self.checker.name}): {categories}")

    def _cancel(self) -> None:
        for _, task in self._inflight:
            task.cancel()
        self._inflight.clear()


def _split_sentences(text: str) -> list[str]:
    parts, last = [], 0
    for match in _SEGMENT_END.finditer(text):
        parts.append(text[last : match.end()])
        last = match.end()
    parts.append(text[last:])
    return parts


def _retrieve(task: asyncio.Task) -> None:
    """A check whose answer nobody waits for any more (a blocked or abandoned answer) must not log its error."""
    if not task.cancelled():
        task.exception()
