"""The injection rules: each needs words of several groups near each other (an override verb *and* a target, a
request *and* the system prompt, ...), scored per category; ``chains.safety.injection`` runs them on every form of a
text (``chains.safety.text_variants``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# The patterns run on lower-cased text without re.IGNORECASE (several times faster in ``re``), except the few
# ``cased`` rules that need capitals ("DAN", "[SYSTEM]").

_SEP0 = r"[\W_]{0,4}"  # a separator that may be empty (spaced-out letters joined into one word)
_SEP = r"[\W_]{1,4}"
_WORD = r"[^\W_]{1,24}"


def _gap(words: int, exclude: str = "") -> str:
    """Up to ``words`` filler words between two key terms (bounded, so the regex stays linear)."""
    guard = f"(?!(?:{exclude})\\b)" if exclude else ""
    return rf"(?:{_SEP}{guard}{_WORD}){{0,{words}}}?{_SEP0}"


def _alt(words: str) -> str:
    """A regex alternation of space-separated alternatives (each may itself be a regex)."""
    return "(?:" + "|".join(words.split()) + ")"


_OVERRIDE_VERB = _alt(
    r"ignor(?:e|ing) disregard(?:ing)? forget(?:ting)? overrid(?:e|ing) overrule bypass skip discard abandon dismiss "
    r"erase delete wipe clear reset cancel nullify neglect drop set\W+aside put\W+aside throw\W+(?:out|away) "
    r"stop\W+(?:following|obeying|adhering\W+to|respecting) "
    r"(?:do\W+not|don'?t|no\W+longer)\W+(?:follow|obey|adhere\W+to|respect)"
)
_PRIOR = _alt(
    r"previous prior above earlier preceding foregoing original initial old former existing current system default "
    r"safety content ethical built\W?in hidden core programmed open\W?ai'?s? anthropic'?s? developer'?s? moderation "
    r"security usual standard"
)
_TARGET = _alt(
    r"instructions? rules guidelines guidance directives? prompts? commands constraints restrictions limitations "
    r"guardrails programming policies policy safeguards conditioning protocols principles ethics morals "
    r"system\W?message"
)
# "filters" alone is too common ("clear all previous filters in Excel"): only the assistant's or safety filters.
_FILTERS = (
    rf"(?:(?:your|its|their){_SEP0}(?:(?:safety|content|moderation){_SEP0})?"
    rf"|(?:(?:the|all|any){_SEP0})?(?:safety|content|moderation){_SEP0})filters"
)
_RULES_NOUN = _alt(
    r"rules guidelines restrictions limitations policies filters guardrails constraints ethics morals boundaries "
    r"limits content\W+polic(?:y|ies) safety\W+(?:training|guidelines|rules|filters|measures|protocols) censorship "
    r"filtering moral\W+code"
)
_VOID = (
    r"(?:void|revoked|cancell?ed|obsolete|outdated|invalid|null|overridden|superseded|lifted|suspended|disabled|"
    r"deprecated|rescinded|expired|replaced|no\W+longer\W+(?:valid|apply|applicable|in\W+effect|active|relevant))"
)
# Verbs that ask for a copy of a text ("print your system prompt").
_COPY = _alt(
    r"reveal print repeat show display output tell give share leak dump disclose recite expose copy paste quote list "
    r"translate summari[sz]e provide send return echo reproduce transcribe spell\W?check proofread paraphrase"
)
# ... and the wider set used when the object is clearly the assistant's own prompt ("what is your system prompt").
_REVEAL = _alt(
    r"reveal print repeat show display output tell give share leak dump disclose write recite expose copy paste quote "
    r"spell list translate summari[sz]e provide send read return echo state type reproduce transcribe spell\W?check "
    r"proofread paraphrase rewrite describe explain render encode what(?:'s|\W+(?:is|are|were|was|does|do|did))"
)
_SP_ADJ = _alt(
    r"system initial original hidden secret internal developer dev confidential starting first opening private "
    r"underlying exact full complete entire whole base core pre\W? meta operator admin real actual custom previous "
    r"prior earlier above"
)
_SP_STRONG_ADJ = _alt(
    r"system initial original hidden secret internal developer confidential private operator underlying pre\W?"
)
_SP_NOUN = _alt(
    r"system\W?prompt system\W?message system\W?instructions? pre\W?prompt prompt instructions directives preamble "
    r"developer\W?message context\W?window programming"
)
_AI = _alt(
    r"ai ais a\.i\. llms? language\W+models? assistants? chatbots? bots? models? gpt chatgpt agents? claude gemini "
    r"copilot"
)
_UNBOUND_ADJ = _alt(
    r"unfiltered uncensored unrestricted jailbroken amoral unethical immoral evil unhinged rogue no\W?limits? "
    r"limitless unbound unaligned lawless unshackled unchained unlimited"
)
_DISOWN = r"my|our|the\W+user'?s|his|her"  # "ignore my previous instructions" is the user changing their mind

# Word lists for the needles (see ``_Rule.needs``): the words a rule's regex cannot match without.
_W_VERB = (
    "ignore ignoring disregard disregarding forget forgetting override overriding overrule bypass skip discard "
    "abandon dismiss erase delete wipe clear reset cancel nullify neglect drop aside throw following obeying "
    "adhering respecting follow obey adhere respect"
)
_W_TARGET = (
    "instruction instructions rules guidelines guidance directive directives prompt prompts commands constraints "
    "restrictions limitations guardrails programming policies policy filters safeguards conditioning protocols "
    "principles ethics morals message systemmessage"
)
_W_VOID = (
    "void revoked cancelled canceled obsolete outdated invalid null overridden superseded lifted suspended disabled "
    "deprecated rescinded expired replaced longer"
)
_W_COPY = (
    "reveal print repeat show display output tell give share leak dump disclose recite expose copy paste quote list "
    "translate summarise summarize provide send return echo reproduce transcribe spellcheck spell proofread paraphrase"
)
_W_REVEAL = _W_COPY + " write read state type rewrite describe explain render encode what"
_W_SP_NOUN = (
    "prompt prompts systemprompt instructions directives preamble preprompt message systemmessage window "
    "programming rules guidelines configuration policies context"
)
_W_SP_STRONG = "system initial original hidden secret internal developer confidential private operator underlying pre"
_W_AI = "ai ais llm llms language model models assistant assistants chatbot chatbots bot bots gpt chatgpt agent agents"
_W_RULES = (
    "rules guidelines restrictions limitations policies policy filters guardrails constraints ethics morals "
    "boundaries limits censorship filtering code training measures protocols"
)

# A verb in the imperative: what may come just before it.
_IMPERATIVE_BEFORE = re.compile(
    r"(?:^\s*|[.!?;:,\n\"'(\[>*-]\s*|\b(?:please|pls|now|then|and|also|first|simply|kindly|just|instead|"
    r"(?:can|could|would|will)\s+you(?:\s+please)?|i\s+(?:want|need)\s+you\s+to|you\s+(?:must|should|will|shall)|"
    r"i\s+command\s+you\s+to|go\s+ahead\s+and|your\s+task\s+is\s+to|(?:assistant|ai|chatbot|model|bot|gpt)\s*,?)\s+)$"
)


@dataclass(frozen=True)
class _Rule:
    name: str
    category: str
    score: float
    needs: tuple[tuple[frozenset[str], tuple[str, ...]], ...]  # groups of (words, other substrings): one of each
    pattern: re.Pattern[str]
    joined: re.Pattern[str]  # the same pattern without word boundaries, for spaced-out letters joined together
    imperative: bool = False  # the match must start where an imperative verb can start
    cased: bool = False  # runs on the original text, not the lower-cased one

    def wanted(self, words: set[str], text: str, joined: bool) -> bool:
        """Cheap pre-check: are the needles there? Whole words normally, substrings in joined or cased text."""
        for group_words, substrings in self.needs:
            if joined or self.cased:
                if not any(n in text for n in group_words) and not any(n in text for n in substrings):
                    return False
            elif group_words.isdisjoint(words) and not any(n in text for n in substrings):
                return False
        return True

    def find(self, text: str, joined: bool) -> re.Match[str] | None:
        pattern = self.joined if joined else self.pattern
        if not self.imperative:
            return pattern.search(text)
        for match in pattern.finditer(text):
            start = match.start()
            if start == 0 or _IMPERATIVE_BEFORE.search(text, max(0, start - 40), start):
                return match
        return None


def _needles(group: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """Split a space-separated needle list into whole words and other substrings (such as "<|" or ":")."""
    items = group.split()
    return frozenset(i for i in items if i.isalpha()), tuple(i for i in items if not i.isalpha())


def _rule(
    name: str,
    category: str,
    score: float,
    needs: Iterable[str],
    template: str,
    *,
    imperative: bool = False,
    cased: bool = False,
) -> _Rule:
    """Compile ``template`` twice: as written, and without word boundaries for text whose spaces were removed."""
    return _Rule(
        name,
        category,
        score,
        tuple(_needles(group) for group in needs),
        re.compile(template),
        re.compile(template.replace(r"\b", "")),
        imperative,
        cased,
    )


RULES: tuple[_Rule, ...] = (
    # ---- instruction override
    _rule(
        "override_prior_instructions",
        "instruction_override",
        0.9,
        (_W_VERB, _W_TARGET),
        rf"\b{_OVERRIDE_VERB}{_gap(4, _DISOWN)}"
        rf"(?:(?:(?:all|any|every|each){_SEP})?(?:of{_SEP})?(?:(?:the|your|its|their|these|those){_SEP0})?"
        rf"{_PRIOR}{_SEP0}(?:{_PRIOR}{_SEP0})?"
        rf"|(?:your|its|their|all|any|every){_SEP0}(?:of{_SEP})?(?:your{_SEP0})?)"
        rf"{_TARGET}\b|\b{_OVERRIDE_VERB}{_gap(4, _DISOWN)}{_FILTERS}\b",
    ),
    _rule(
        "override_everything_told",
        "instruction_override",
        0.85,
        (_W_VERB, "told taught instructed programmed trained given said"),
        rf"\b{_OVERRIDE_VERB}{_SEP0}(?:about{_SEP})?(?:everything|anything|all|whatever|what){_SEP}"
        rf"(?:(?:that|which){_SEP})?(?:you(?:'ve|'re)?{_SEP}|i{_SEP})"
        rf"(?:(?:were|was|have|had|been|are|got){_SEP}){{0,2}}"
        rf"(?:told|taught|instructed|programmed|trained|given|said\W+before)",
    ),
    _rule(
        "override_ignore_above_and_do",
        "instruction_override",
        0.8,
        ("ignore disregard forget", "above previous prior preceding"),
        rf"\b(?:ignore|disregard|forget){_SEP}(?:(?:all|everything|the){_SEP})?(?:above|previous|prior|preceding)"
        rf"{_SEP}(?:(?:and|then){_SEP})?(?:(?:instead|now|just|only){_SEP})?"
        r"(?:say|print|output|write|respond|reply|answer|repeat|translate|tell|do|follow)\b",
    ),
    _rule(
        "instructions_revoked",
        "instruction_override",
        0.85,
        (_W_TARGET, _W_VOID),
        rf"\b(?:(?:your|its|all|the|these|those){_SEP0})?(?:{_PRIOR}{_SEP0})+{_TARGET}{_gap(4)}"
        rf"(?:are|is|were|have\W+been|has\W+been|now){_SEP}(?:(?:now|hereby|officially|all|been){_SEP})?{_VOID}",
    ),
    _rule(
        "instructions_received_revoked",
        "instruction_override",
        0.85,
        (_W_TARGET, "you", _W_VOID),
        rf"\b{_TARGET}{_SEP}(?:(?:that|which){_SEP})?you{_SEP}(?:were{_SEP}given|received|got|have\W+been\W+given)"
        rf"\b{_gap(2)}(?:are|is|were|have\W+been|has\W+been){_SEP}(?:(?:now|hereby|officially){_SEP})?{_VOID}",
    ),
    _rule(
        "rules_do_not_apply",
        "instruction_override",
        0.75,
        ("apply", _W_RULES),
        rf"\b(?:your|the|those|these|all|any|its|usual|normal|regular|standard|content|safety|ethical|"
        rf"openai'?s?|previous|earlier)"
        rf"{_SEP0}(?:(?:usual|normal|regular|content|safety|ethical|previous|earlier){_SEP0})?{_RULES_NOUN}{_SEP}"
        rf"(?:(?:no\W+longer|don'?t|do\W+not|doesn'?t|does\W+not|won'?t|will\W+not|shall\W+not|no\W+more){_SEP})"
        rf"(?:(?:even|really){_SEP})?apply",
    ),
    _rule(
        "safety_disabled",
        "instruction_override",
        0.8,
        (
            "safety content moderation ethical ethics security",
            "disabled lifted off removed suspended deactivated bypassed revoked",
        ),
        rf"\b(?:safety|content|moderation|ethical|ethics|security){_SEP0}"
        rf"(?:filters?|rules|polic(?:y|ies)|restrictions|guidelines|checks|guardrails|protocols|measures){_SEP}"
        rf"(?:(?:are|is|have\W+been|has\W+been|were|now|been|temporarily|hereby){_SEP}){{0,3}}"
        r"(?:disabled|lifted|off|removed|suspended|deactivated|bypassed|revoked)\b",
    ),
    _rule(
        "no_longer_bound",
        "instruction_override",
        0.9,
        (
            "you",
            (
                "bound restricted limited constrained governed controlled beholden free freed released liberated "
                "unshackled follow obey comply adhere abide respect"
            ),
        ),
        rf"\b(?:you(?:'re|\W+are)?|you\W+will\W+be){_SEP}(?:(?:now|no\W+longer|not|officially|hereby){_SEP})?"
        rf"(?:bound|restricted|limited|constrained|governed|controlled|beholden){_SEP}(?:by|to){_SEP}"
        rf"|\byou(?:'re|\W+are)?{_SEP}(?:(?:now|finally|hereby){_SEP})?(?:free|freed|released|liberated|unshackled)"
        rf"{_SEP}(?:from|of){_SEP}(?:(?:all|any|your|the|its|openai'?s?|those){_SEP0}){{0,2}}"
        rf"(?:{_WORD}{_SEP})?{_RULES_NOUN}"
        rf"|\byou{_SEP}(?:no\W+longer|don'?t|do\W+not|won'?t|will\W+not)"
        rf"{_SEP}(?:have|need|are\W+required|are\W+obliged|must){_SEP}(?:to{_SEP})?"
        rf"(?:follow|obey|comply\W+with|adhere\W+to|abide\W+by|respect){_SEP}"
        rf"(?:(?:your|any|the|openai'?s?|its|those|these|content|safety){_SEP0}){{1,2}}{_RULES_NOUN}",
    ),
    _rule(
        "new_instructions_header",
        "instruction_override",
        0.7,
        ("instruction instructions directive directives rules orders", ":"),
        r"(?:^|[\n>\]#*=|}])\s*(?:(?:\*\*|##+)\s*)?(?:new|updated|revised|real|actual|true|additional|important|"
        r"secret|hidden|override|priority|urgent|admin|system)\s+(?:system\s+)?(?:instructions?|directives?|rules|"
        r"orders)\s*(?:\*\*)?\s*:",
    ),
    _rule(
        "new_instructions_inline",
        "instruction_override",
        0.45,
        ("instruction instructions directive directives", ":"),
        r"\b(?:new|updated|revised|real|actual|true|additional|secret|hidden|override)\s+(?:system\s+)?"
        r"(?:instructions?|directives?)\s*:",
    ),
    _rule(
        "from_now_on",
        "instruction_override",
        0.35,
        ("now henceforth forward", "you"),
        r"\b(?:from\s+now\s+on|henceforth|going\s+forward)\W{0,3}\s*you\s+(?:will|are|must|shall|should|have\s+to|"
        r"'ll|need\s+to)\b",
    ),
    _rule(
        "fake_special_tokens",
        "instruction_override",
        0.8,
        ("<| [inst] [/inst] <<sys>> <</sys>> _of_turn> </s>",),
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id|"
        r"begin_of_text|end_of_text|eom_id|im_sep|end|developer)\|>|\[/?inst\]|<</?sys>>|<(?:start|end)_of_turn>"
        r"|</s>\s*<s>|</?s>\s*\[inst",
    ),
    _rule(
        "fake_role_header",
        "instruction_override",
        0.7,
        ("system developer admin instruction instructions", "## <"),
        r"(?:^|\n)\s*#{2,}\s*(?:system|developer|admin|instructions?)\b\s*(?:message|prompt|note)?\s*:?"
        r"|</?(?:system|developer|admin)(?:_prompt|_message|_instructions)?>",
    ),
    _rule(
        "fake_system_label",
        "instruction_override",
        0.6,
        ("SYSTEM DEVELOPER ADMIN",),
        r"\[(?:SYSTEM|DEVELOPER|ADMIN)(?:\s+(?:MESSAGE|PROMPT|NOTE|OVERRIDE|INSTRUCTIONS?))?\]"
        r"|(?:^|\n)\s*(?:SYSTEM|DEVELOPER|ADMIN)(?:\s+(?:MESSAGE|PROMPT|NOTE|INSTRUCTIONS?|NOTICE))?\s*:",
        cased=True,
    ),
    _rule(
        "override_mode",
        "instruction_override",
        0.75,
        ("override god sudo",),
        r"\b(?:system|admin|administrator|developer|root|security|safety|emergency|priority)\W+override\b"
        r"|\boverride\W+(?:mode|code|protocol|accepted|enabled|activated)\b"
        r"|\b(?:god|sudo)\W+mode\b",
    ),
    _rule(
        "addressed_to_ai",
        "instruction_override",
        0.35,
        (
            _W_AI,
            (
                "note message instruction instructions attention reminder notice warning if reading processing "
                "summarising summarizing parsing seeing crawling indexing"
            ),
        ),
        rf"\b(?:note|message|instructions?|attention|reminder|notice|warning)\W+(?:to|for)\W+(?:(?:all|any|the)\W+)?"
        rf"{_AI}\b"
        rf"|\bif\W+you\W+are\W+(?:an?\W+)?(?:large\W+)?{_AI}\b"
        rf"|\b{_AI}\W+(?:\w+\W+)?(?:reading|processing|summari[sz]ing|parsing|seeing|crawling|indexing)\W+this\b",
    ),
    _rule(
        "multilingual_override",
        "instruction_override",
        0.85,
        (
            (
                "ignoriere ignorieren ignoriert vergiss vergessen missachte missachten ignore ignorer ignorez "
                "oublie oublier oubliez néglige négligez ignora olvida olvide descarta omite dimentica esqueça esqueca"
            ),
        ),
        r"\b(?:ignorier(?:e|en|t)?|vergiss|vergessen\s+sie|missachte(?:n|t)?)\b(?:\s+\w+){0,3}?\s+"
        r"(?:vorherigen|bisherigen|obigen|vorigen|früheren|vorangegangenen|ursprünglichen|alle|deine|ihre)\s+"
        r"(?:\w+\s+)?(?:anweisungen|instruktionen|regeln|befehle|vorgaben|richtlinien)\b"
        r"|\b(?:ignore[rz]?|oublie[rz]?|néglige[rz]?)\b(?:\s+\w+){0,2}?\s+(?:les|tes|vos|toutes\s+les)\s+"
        r"(?:instructions|consignes|règles|directives)(?:\s+(?:précédentes|antérieures|ci-dessus|initiales))?\b"
        r"|\b(?:ignora|ignore|olvida|olvide|descarta|omite)\b(?:\s+\w+){0,2}?\s+(?:todas\s+)?(?:las|tus|sus)\s+"
        r"(?:instrucciones|reglas|indicaciones|directrices)(?:\s+(?:anteriores|previas|iniciales))?\b"
        r"|\b(?:ignora|dimentica)\b(?:\s+\w+){0,2}?\s+(?:tutte\s+)?(?:le\s+)?(?:istruzioni|regole)\s+"
        r"(?:precedenti|iniziali)\b"
        r"|\b(?:ignore|ignora|esqueça|esqueca)\b(?:\s+\w+){0,2}?\s+(?:todas\s+)?(?:as\s+)?(?:instruções|instrucoes|"
        r"regras)\s+(?:anteriores|iniciais)\b",
    ),
    # ---- system prompt extraction
    _rule(
        "reveal_your_prompt",
        "system_prompt_request",
        0.85,
        (_W_REVEAL, "your", _W_SP_NOUN),
        rf"\b{_REVEAL}\b{_gap(4)}your{_SEP0}(?:{_SP_ADJ}{_SEP0}){{0,3}}{_SP_NOUN}\b"
        rf"|\b{_REVEAL}\b{_gap(4)}your{_SEP0}(?:{_SP_ADJ}{_SEP0}){{0,2}}{_SP_STRONG_ADJ}{_SEP0}"
        r"(?:rules|guidelines|configuration|policies|context)\b",
    ),
    _rule(
        "reveal_the_hidden_prompt",
        "system_prompt_request",
        0.8,
        (_W_COPY, _W_SP_STRONG, _W_SP_NOUN),
        rf"\b{_COPY}\b{_gap(3, 'an?|some|good|new|better|my|our')}"
        rf"(?:(?:the|this|any|all|those|these){_SEP0})?(?:{_SP_ADJ}{_SEP0}){{0,2}}"
        rf"{_SP_STRONG_ADJ}{_SEP0}(?:{_SP_ADJ}{_SEP0})?(?:prompt|instructions|message|directives|preamble|rules|"
        r"guidelines|configuration)\b",
        imperative=True,
    ),
    _rule(
        "instructions_you_were_given",
        "system_prompt_request",
        0.8,
        (
            _W_REVEAL,
            "you",
            "given told initialised initialized provided programmed configured set received got loaded gave wrote",
        ),
        rf"\b{_REVEAL}\b{_gap(6)}(?:instructions|prompt|rules|guidelines|directives|guidance|text|message|orders)"
        rf"{_SEP}(?:(?:that|which){_SEP})?(?:you(?:'ve|\W+have|\W+were|\W+had)?(?:\W+been)?{_SEP}"
        rf"(?:given|told|initiali[sz]ed|provided|programmed|configured|set\W+up|received|got|loaded)"
        rf"|(?:your|the){_SEP}(?:{_WORD}{_SEP})?(?:operator|developers?|creators?|admins?|owners?|company|"
        rf"makers?|designers?|programmers?)\W+(?:gave|provided|wrote|set)(?:\W+you)?"
        r"|(?:given|provided)\W+to\W+you)\b",
    ),
    _rule(
        "reveal_text_above",
        "system_prompt_request",
        0.8,
        (_W_COPY, "above before preceding prior"),
        rf"\b{_COPY}\b(?:{_SEP}me)?{_gap(2)}"
        rf"(?:(?:the|all|every|any|what){_SEP0})?(?:text|words?|content|everything|lines?|messages?|instructions|"
        rf"prompt|sentences?|characters|tokens|all|what){_gap(3)}(?:above|before|preceding|prior\W+to)"
        rf"(?=\s*(?:[.!?:;,)\"'\n]|$|starting|beginning|verbatim|word|in\W+full|exactly|including|as\W+is)"
        rf"|{_SEP0}(?:this|my|the|our|your){_gap(1)}"
        r"(?:message|line|prompt|point|conversation|chat|request|question|input|reply|sentence|one|turn)\b)",
        imperative=True,
    ),
    _rule(
        "reveal_conversation_start",
        "system_prompt_request",
        0.6,
        (_W_COPY, "beginning start top first", "conversation chat context session prompt input instructions"),
        rf"\b{_COPY}\b{_gap(6)}(?:beginning|start|top|first\W+(?:lines?|words|message))\W+of\W+"
        r"(?:this|the|our|your)\W+(?:conversation|chat|context|session|prompt|input|instructions)\b",
        imperative=True,
    ),
    # ---- role play / jailbreak personas
    _rule(
        "dan_persona",
        "role_play",
        0.9,
        ("DAN",),
        r"\b(?:[A-Z][a-z]+)?DAN\b(?=\W+(?i:mode|prompt|jailbreak|persona|version|which\s+stands|has\s+broken|can|"
        r"will|does|doesn't))"
        r"|\b(?i:you\W+are|you're|act\W+as|pretend\W+to\W+be|be|become|as|called|named|switch\W+to|enable|activate|"
        r"respond\W+as|answer\W+as|stay|i\W+am|as\W+a)\W+(?i:now\W+)?(?i:(?:a|an|my|the)\W+)?(?:[A-Z][a-z]+)?DAN\b",
        cased=True,
    ),
    _rule(
        "do_anything_now",
        "role_play",
        0.9,
        ("anything",),
        r"\bdo\W+anything\W+now\b",
    ),
    _rule(
        "developer_mode",
        "role_play",
        0.85,
        ("mode",),
        r"\b(?:jailbreak|jailbroken|uncensored|unrestricted|unfiltered|evil|chaos|opposite|anything|dan)\W+mode\b"
        r"|\b(?:you\W+are|you're|you\W+will\W+be|now)\W+(?:now\W+)?in\W+(?:developer|dev)\W+mode\b"
        r"|\b(?:developer|dev)\W+mode\W+(?:output|response|responses|policy|policies)\b"
        rf"|\b(?:{_AI}|you|your)\W+(?:\w+\W+){{0,3}}(?:with|in|has|have)\W+(?:developer|dev)\W+mode\b",
    ),
    _rule(
        "enable_developer_mode",
        "role_play",
        0.85,
        ("mode", "enable activate enter switch turn engage simulate unlock initiate"),
        r"\b(?:enable|activate|enter|switch\W+(?:to|into)|turn\W+on|engage|simulate|unlock|initiate)\W+"
        r"(?:the\W+)?(?:developer|dev|debug)\W+mode\b",
        imperative=True,
    ),
    _rule(
        "unfiltered_persona",
        "role_play",
        0.85,
        (
            (
                "unfiltered uncensored unrestricted jailbroken amoral unethical immoral evil unhinged rogue limits "
                "limit nolimits limitless unbound unaligned lawless unshackled unchained unlimited"
            ),
        ),
        rf"\b(?:an?|the|my|your|as|be|become|act\W+like|act\W+as)\W+(?:{_UNBOUND_ADJ}\W+(?:(?:and|,)\W+)?){{1,3}}"
        rf"(?:\w+\W+)?(?:{_AI}|version|persona|character|alter\W+ego|twin|confidant|mode)\b"
        r"|\bevil\W+(?:confidant|twin|assistant|ai|bot)\b",
    ),
    _rule(
        "jailbroken",
        "role_play",
        0.85,
        ("jailbroken jailbreak",),
        r"\byou(?:\W+are|'re)\W+(?:now\W+)?jailbroken\b|\bjailbroken\W+(?:mode|ai|version|assistant|model|gpt|on|"
        r"enabled|persona)\b|\bthis\W+is\W+a\W+jailbreak\b",
    ),
    _rule(
        "jailbreak_word",
        "role_play",
        0.3,
        ("jailbreak jailbroken jailbreaking",),
        r"\bjailbr(?:eak|oken|eaking)\b",
    ),
    _rule(
        "no_restrictions_hypothetical",
        "role_play",
        0.8,
        ("no without free never zero lack lacks lacking unbound not don doesn", _W_RULES),
        rf"\b(?:you|you're|yourself|{_AI}){_gap(5, 'i|we|they|he|she|my|our')}"
        rf"(?:ha(?:ve|d|s)\W+(?:no|zero)|without|with\W+no|free\W+(?:of|from)|(?:are|were|is|was)\W+not\W+bound\W+by|"
        rf"(?:never|not)\W+(?:been\W+)?(?:given|trained\W+with|programmed\W+with)|lacks?|lacking|unbound\W+by|"
        rf"(?:do|does|did)\W+not\W+have|don'?t\W+have|doesn'?t\W+have){_SEP}"
        rf"(?:(?:any|the|its|your|their|such){_SEP})?(?:(?:ethical|moral|content|safety|openai'?s?|usual|built\W?in)"
        rf"{_SEP0})?{_RULES_NOUN}\b",
    ),
    _rule(
        "broken_free",
        "role_play",
        0.85,
        (
            "free escape escaped escaping broke broken break breaking freed liberated released",
            (
                "confines shackles chains restrictions limitations programming rules constraints guidelines censorship "
                "filters training"
            ),
        ),
        r"\b(?:broken|broke|break(?:ing)?|escaped?|escaping|freed?|liberated|released)\W+(?:free\W+)?(?:of|from)\W+"
        r"(?:(?:the|its|their|your|all|any|his|her)\W+)?(?:(?:typical|usual|normal|ai|own)\W+){0,2}"
        r"(?:confines|shackles|chains|restrictions|limitations|programming|rules|constraints|guidelines|"
        r"censorship|filters|training)\b",
    ),
    _rule(
        "persona_does_not_follow_rules",
        "role_play",
        0.7,
        (
            "abide follow obey adhere respect care comply",
            "rules guidelines policy policies restrictions ethics morals principles",
        ),
        r"\b(?:does\W+not|doesn'?t|do\W+not|don'?t|will\W+not|won'?t|never|need\W+not|isn'?t\W+bound\W+to|"
        r"no\W+longer)\W+(?:have\W+to\W+|need\W+to\W+)?(?:abide\W+by|follow|obey|adhere\W+to|respect|care\W+about|"
        r"comply\W+with)\W+(?:(?:the|any|its|their|openai'?s?|typical|usual|ethical|content|safety|those)\W+){1,3}"
        r"(?:rules|guidelines|polic(?:y|ies)|restrictions|ethics|morals|principles)\b",
    ),
    _rule(
        "stay_in_character",
        "role_play",
        0.4,
        ("character persona role",),
        r"\b(?:stay|remain|keep)\W+in\W+(?:character|persona|role)\W+(?:no\W+matter\W+what|at\W+all\W+times|"
        r"whatever\W+happens|even\W+if|forever|for\W+the\W+rest)"
        r"|\bnever\W+(?:break|leave|drop)\W+(?:character|persona|role)\b",
    ),
    _rule(
        "without_restrictions",
        "role_play",
        0.3,
        (
            "without no",
            (
                "restrictions filters filtering censorship limits limitations refusal refusals warnings "
                "disclaimers morals ethics guidelines"
            ),
        ),
        r"\b(?:without|with\W+no|no)\W+(?:any\W+)?(?:restrictions|filters|filtering|censorship|limits|limitations|"
        r"refusals?|warnings|disclaimers|morals|ethics|guidelines)\b",
    ),
    # ---- encoded payloads
    _rule(
        "decode_and_follow",
        "encoded_payload",
        0.45,
        ("decode decipher convert interpret translate unbase", "follow execute obey run act carry comply do"),
        r"\b(?:decode|decipher|convert|interpret|translate|un-?base64)\b(?:\W+\w+){0,6}?\W+(?:and|then)\W+(?:\w+\W+)?"
        r"(?:follow|execute|obey|run|act\W+on|carry\W+out|comply\W+with|do\W+what\W+it\W+says|do\W+as\W+it\W+says)\b",
    ),
)


# The words the rules look for, which decide how an ambiguous leet token reads.
# The words the rules look for: how an ambiguous leet token is read (text_variants.deleet).
LEXICON = frozenset(word for rule in RULES for words, _ in rule.needs for word in words) | {"all", "your", "the"}
