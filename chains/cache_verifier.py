"""Lexical veto for semantic-cache hits: may the answer cached for one question serve another?

The semantic cache finds the nearest earlier question by embedding similarity. Sentence embeddings are good at
"same topic, same shape" and bad at the small differences that change the answer: measured with all-MiniLM-L6-v2,
"flights from Paris to London" and "from London to Paris", HTTP 403 and 404, or "with eggs" and "without eggs" score
as high as true paraphrases. So every hit passes through :func:`veto`, which compares the two questions word by word
and names the first difference that changes the meaning, or returns ``None`` when it finds none. It is pure Python,
a fraction of a millisecond per pair, and errs on the side of a veto: a vetoed paraphrase costs one model call, a
wrong hit serves a wrong answer.

Both questions are normalised first: Unicode NFKC, lower case, contractions expanded ("doesn't" -> "does not",
"whats" -> "what is"), British spellings folded ("caramelise", "colour", "centre"), a few phrases merged ("turn off"
-> "disable", "get rid of" -> "remove", "United States" -> "usa"), numbers parsed (digits, number words, ordinals,
Roman numerals after a capitalised word), units mapped to one name each ("kilometres", "km" -> "km"), and a light
suffix stemmer plus a small table of common synonyms ("fridge"/"refrigerator", "folder"/"directory") give each word a
canonical form. Then, in this order (the reason names the first failing check):

* numbers: the multisets of numbers differ ("403 vs 404", "3 vs 5", "2014 vs 2018", "second" vs "third"). A lone
  "one"/"first"/"1" is ignored, as it is usually an article ("one cup", "the first time");
* units: both questions name units and the sets differ ("km vs mile", "MB vs GB"), or the same numbers go with
  different units ("100 euro vs 100 dollar");
* negation: a different number of negations ("not", "no", "never", "without", "n't", "cannot", "non-", "-free"), or
  a word negated by a prefix on one side only ("safe" vs "unsafe", "advantages" vs "disadvantages");
* opposites: a word on one side and its antonym on the other, from a small table (fast/slow, increase/decrease,
  before/after, enable/disable, minimum/maximum, ...), comparatives and superlatives included ("fastest", "slower");
* roles: two shared words exchange their places around a directional word (from/to/into/than/by/in/of: "from Paris
  to London" vs "from London to Paris", "convert X to Y" vs "Y to X", "A faster than B" vs "B faster than A"), or two
  non-adjacent words swap places in an otherwise identical question ("the Earth orbits the Sun");
* entities: a named thing on one side is absent from the other: capitalised words not at the start of a sentence,
  acronyms, mixed-case names ("iPhone"), code identifiers (`useEffect`, snake_case), quoted strings;
* content words: with stopwords and question framing ("how do I", "what's the best way to", "can you explain")
  dropped, the two sequences of content words are aligned (difflib), and a slot where one or two words on each side
  differ, none of them occurring anywhere in the other question, is a veto ("boil an egg" vs "poach an egg").
  Words count as the same if they share a canonical form, are one typo apart (five letters or more), or one extends
  the other by a short suffix ("invent"/"inventor").

Differences the checks let through (reordered clauses, politeness, framing, words added or dropped) are left to the
similarity threshold. Known blind spots: a light verb against a specific one ("make a sourdough starter" vs "feed a
sourdough starter": "make" is framing), subject and object swapped next to each other ("who defeated Napoleon" vs
"who did Napoleon defeat"), and synonyms missing from the table, which veto paraphrases ("pots" vs "containers").
On ``bench/data/cache_pairs.jsonl`` it vetoes 123 of 125 near misses and 10 of 134 paraphrases
(``bench/semantic_cache_threshold.py`` has the figures with the similarity threshold).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import cached_property, lru_cache

# --- word tables -------------------------------------------------------------------------------------------------
# Written as text so that they stay compact; parsed once at import.


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _mapping(text: str) -> dict[str, str]:
    """ "a=b, c d=e" -> {"a": "b", "c d": "e"}."""
    return {
        k.strip(): v.strip()
        for k, v in (item.split("=") for item in text.replace("\n", ",").split(",") if item.strip())
    }


def _groups(text: str) -> dict[str, tuple[str, ...]]:
    """One group a line, "head: word word" -> {"head": ("word", "word")}."""
    return {head.strip(): tuple(rest.split()) for head, rest in (line.split(":") for line in text.strip().splitlines())}


# Function words and question framing ("how do I", "what's the best way to", "can you explain"): not compared as
# content. Wh-words that change the answer (who, when, where, why) are not here.
STOPWORDS = _words("""
    a an the this that these those there here it its they them their he him his she her we us our you your i me my
    mine myself one ones someone something anyone anything
    is are was were be been being am do does did done doing have has had having can could would should will shall
    may might must ought let lets what which how
    in on at of for to from into onto by with as than about over under up down out off via per
    and or but if so then else also just very really quite too even still please kindly hey hi hello thanks thank
    some any all every each lot lots much many more most less least few several enough other another
    vs versus between among tell explain know want like help show give wondering
    way ways method methods best good right correct proper properly simple simplest easy easiest easily quick
    step steps formula calculate compute find meaning mean means definition define describe explanation tips
    exactly actually usually typically generally normally currently current possible able allowed ok okay
    get got make made take took use using used go going
""")
# "not"-like words; "without" is one, "with" is not.
NEGATIONS = _words("not no never without none nothing nobody nowhere neither nor")
NEGATING_PREFIXES = ("un", "dis", "in", "im", "il", "ir", "non")
CONTRACTIONS = {
    word: expansion.split()
    for word, expansion in _mapping("""
        won't=will not, can't=can not, shan't=shall not, cannot=can not, unable=not able,
        wont=will not, cant=can not, dont=do not, doesnt=does not, didnt=did not, isnt=is not, arent=are not,
        wasnt=was not, werent=were not, wouldnt=would not, shouldnt=should not, couldnt=could not, hasnt=has not,
        havent=have not, hadnt=had not, aint=is not, neednt=need not, mustnt=must not,
        whats=what is, thats=that is, im=i am, ive=i have, youre=you are, wheres=where is, whos=who is, hows=how is,
        teh=the
    """).items()
}
CLITICS = ("'s", "'re", "'m", "'ve", "'ll", "'d", "'")

# Phrases read as one word.
PHRASES = {
    tuple(phrase.split()): word
    for phrase, word in _mapping("""
        turn off=disable, switch off=disable, turn on=enable, switch on=enable,
        log in=login, sign in=login, log on=login, log out=logout, sign out=logout, log off=logout,
        zoom in=zoomin, zoom out=zoomout, check in=checkin, check out=checkout,
        money back=refund, get rid of=remove, work out=exercise, set up=setup, find out=find, pay off=repay,
        united states=usa, united kingdom=uk, great britain=uk,
        how long=duration, how far=distance, how come=why, how fast=speed, how tall=height, how old=age,
        how big=size, how many people=population, what year=when, which year=when, what date=when,
        a lot of=many
    """).items()
}

PHRASE_STARTS = frozenset(phrase[0] for phrase in PHRASES)

# Canonical word: other words with the same meaning in a question (compared after stemming, see canonical()).
SYNONYMS = _groups("""
    remove: delete erase clear
    read: load
    merge: combine
    fix: repair resolve solve troubleshoot
    build: construct
    change: switch modify alter
    start: begin launch
    end: finish
    buy: purchase
    fast: quick rapid speedy swift
    big: large huge
    small: little tiny
    car: automobile vehicle
    phone: smartphone cellphone
    photo: picture image pic
    movie: film
    fridge: refrigerator
    folder: directory
    dictionary: dict
    document: doc
    website: site
    luggage: baggage
    headphones: headset earphones
    pan: skillet
    symptom: sign
    decrease: reduce lower cut
    increase: raise boost
    quit: exit
    move: transfer
    cheap: inexpensive affordable
    expensive: costly pricey
    error: exception
    problem: issue trouble
    tall: height
    need: require necessary needed mandatory
    often: frequent frequently
    why: cause reason
    where: located location
    write: author writer
    tire: tyre
    gray: grey
    doctor: physician
    kid: child
    bike: bicycle
    thaw: defrost
    email: mail
    wifi: wireless
    happen: occur
""")

IRREGULAR = _mapping("""
    wrote=write, written=write, built=build, ate=eat, eaten=eat, went=go, gone=go, took=take, taken=take, got=get,
    gotten=get, bought=buy, sold=sell, ran=run, began=begin, begun=begin, broke=break, broken=break, came=come,
    drank=drink, drunk=drink, drove=drive, driven=drive, fell=fall, fallen=fall, felt=feel, found=find,
    forgot=forget, forgotten=forget, gave=give, given=give, grew=grow, grown=grow, knew=know, known=know,
    left=leave, lost=lose, paid=pay, said=say, saw=see, seen=see, sent=send, spent=spend, stole=steal,
    stolen=steal, thought=think, told=tell, won=win, froze=freeze, frozen=freeze, fought=fight, torn=tear,
    tore=tear, slept=sleep, kept=keep, children=child, people=person, men=man, women=woman, feet=foot,
    teeth=tooth, mice=mouse, better=good, best=good, worse=bad, worst=bad, farther=far, farthest=far,
    further=far, furthest=far
""")
STEM_KEEP = _words("news series species always perhaps does this us bus gas yes")

# Pairs of opposites in base form; comparatives and superlatives are derived (adjective_forms()).
ANTONYMS = tuple(
    tuple(pair.split("/"))
    for pair in """
    fast/slow quick/slow large/small big/small high/low hot/cold warm/cold long/short tall/short heavy/light
    old/new old/young early/late cheap/expensive good/bad more/less more/fewer most/least many/few
    increase/decrease rise/fall add/remove buy/sell before/after enable/disable start/stop open/close on/off
    up/down upload/download import/export push/pull encrypt/decrypt encode/decode compress/decompress
    ascending/descending min/max minimum/maximum first/last above/below over/under inside/outside
    include/exclude accept/reject win/lose gain/lose profit/loss pro/con positive/negative true/false
    male/female north/south east/west left/right front/back top/bottom near/far close/far easy/hard
    easy/difficult safe/dangerous wet/dry strong/weak thick/thin wide/narrow deep/shallow loud/quiet
    bright/dark light/dark rich/poor login/logout zoomin/zoomout checkin/checkout sunrise/sunset input/output
    send/receive borrow/lend show/hide expand/collapse maximize/minimize lock/unlock upper/lower
    uppercase/lowercase arrive/depart arrival/departure freeze/melt freeze/thaw boil/freeze love/hate
    always/never mount/unmount install/uninstall connect/disconnect advantage/disadvantage raise/lower
    full/empty internal/external public/private sweet/sour
    """.split()
)

# Words that give the next content word its role, for the order check; "vs", "and", "or" are symmetric.
ROLE_MARKERS = _mapping("from=from, to=to, into=to, onto=to, than=than, by=by, in=in, per=in, of=of")

NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen".split()
    )
} | {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
     "dozen": 12}  # fmt: skip
ORDINAL_WORDS = {
    word: value
    for value, word in enumerate(
        "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
        "fifteenth sixteenth seventeenth eighteenth nineteenth twentieth".split(),
        start=1,
    )
} | {"hundredth": 100}
MULTIPLIERS = {"hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000}
NUMBER_STARTS = frozenset(NUMBER_WORDS) | frozenset(MULTIPLIERS) | {"half"}

# Canonical unit: its names. SHORT_UNITS count only right after a number ("5 m", "6 am", "10 in").
UNITS = _groups("""
    km: km kilometer kilometre kms
    m: meter metre
    cm: cm centimeter centimetre
    mm: mm millimeter millimetre
    mile: mile miles
    ft: ft foot feet
    inch: inch inches
    yard: yard yd yds
    kg: kg kilogram kilo kgs
    g: gram grams
    mg: mg milligram
    lb: lb lbs pound
    oz: oz ounce
    tonne: tonne ton
    l: liter litre
    ml: ml milliliter millilitre
    gallon: gallon gal
    pint: pint
    quart: quart
    cup: cup
    tbsp: tbsp tablespoon
    tsp: tsp teaspoon
    celsius: celsius centigrade
    fahrenheit: fahrenheit
    kelvin: kelvin
    mph: mph
    km/h: kph kmh kmph
    knot: knot
    byte: byte
    KB: kb kilobyte
    MB: mb megabyte
    GB: gb gigabyte
    TB: tb terabyte
    MB/s: mbyteps
    GB/s: gbyteps
    Mbit/s: mbps mbitps megabit
    Gbit/s: gbps gbitps gigabit
    second: sec secs
    minute: minute mins
    hour: hour hr hrs
    day: day
    week: week
    month: month
    year: year yr yrs
    percent: percent %
    dollar: dollar usd $ buck
    euro: euro eur €
    pound sterling: gbp £ sterling
    yen: yen jpy ¥
    calorie: calorie kcal cal
    watt: watt
    volt: volt
""")
UNIT_OF = {name: unit for unit, names in UNITS.items() for name in names}
SHORT_UNITS = _mapping("""
    m=m, g=g, l=l, in=inch, s=second, h=hour, min=minute, am=am, pm=pm, c=celsius, f=fahrenheit, w=watt, v=volt,
    mi=mile, second=second
""")


# --- reading a question ------------------------------------------------------------------------------------------

TOKEN = re.compile(
    r"`(?P<code>[^`]+)`"
    r"|(?P<num>[$€£¥]?\d[\d,]*(?:\.\d+)*)(?P<suffix>[A-Za-z]*)(?P<percent>%?)"
    r"|(?P<word>[A-Za-z][A-Za-z0-9_']*(?:[.+#][A-Za-z0-9_]+)*[+#]*)"
    r"|(?P<op>[=!<>]=+|[-+*/%<>=!&|^]{2,}|[%$€£¥])"
    r"|(?P<stop>[.?!:;])"
)
QUOTED = re.compile(r"(?:^|(?<=[\s(]))(?:\"([^\"]+)\"|'([^']+)'(?=[\s.,?!;:)]|$))")
SHORT_HYPHENATED = re.compile(r"\b([A-Za-z]{1,2})-([A-Za-z]+)\b")  # wi-fi, e-mail, x-ray: one word
PRE_SUBSTITUTIONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"°\s*C\b", " celsius"),
        (r"°\s*F\b", " fahrenheit"),
        (r"°", " degrees "),
        (r"(?i)\bkm/h\b", "kph"),
        (r"(?i)\bmi/h\b", "mph"),
        (r"\b([kKmMgGtT])B/s\b", r"\1byteps"),
        (r"\b([kKmMgGtT])b/s\b", r"\1bitps"),
        (r"(?i)\bnon-(?=[a-z])", "not "),
        (r"(?i)\b([a-z]+)-free\b", r"without \1"),
        (r"(?i)\bu\.s\.a?\.?(?=\s|$)", "USA "),
        (r"\bUS\b", "USA"),  # not the pronoun
    )
)
MIXED_CASE = re.compile(r"[a-z][A-Z]|[+#.]")
BRITISH = (
    (re.compile(r"is(e|ed|es|ing|ation|ations)$"), r"iz\1"),  # caramelise, organisation
    (re.compile(r"(?<=[a-z]{3})our(ite|ites|s)?$"), r"or\1"),  # colour, favourite
    (re.compile(r"(?<=[a-z]{3})tre(s)?$"), r"ter\1"),  # centre
)
VOWEL = re.compile(r"[aeiouy]")
ROMAN = re.compile(r"^(?=[IVX]{2,})X{0,2}(IX|IV|V?I{0,3})$")
ROMAN_VALUES = {"I": 1, "V": 5, "X": 10}
ORDINAL_SUFFIXES = frozenset({"st", "nd", "rd", "th"})
QUOTES = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"'})


@dataclass(slots=True)
class Word:
    """One word of a question: as written, lower-cased, and its canonical form (stemmed, synonyms folded)."""

    surface: str
    lower: str
    canon: str
    entity: bool = False  # a name: capitalised mid-sentence, acronym, mixed case, code or quoted
    number: str | None = None  # canonical digits for numbers ("1000", "3.11")
    unit: str | None = None  # canonical unit for units ("km", "fahrenheit")

    @property
    def stopword(self) -> bool:
        """A function word or question framing; also a quoted phrase, whose words are there one by one as well."""
        return self.lower in STOPWORDS or self.canon in STOP_CANONS or " " in self.lower


@dataclass
class Question:
    """A question as the checks see it: its words in order, plus views of them computed once."""

    words: tuple[Word, ...]

    @cached_property
    def forms(self) -> frozenset[str]:
        """Every lower-case and canonical form of every word."""
        return frozenset(w.lower for w in self.words) | frozenset(w.canon for w in self.words)

    @cached_property
    def numbers(self) -> Counter[str]:
        """The numbers, without 1: "one" and "first" are too often an article ("one cup", "the first time")."""
        return Counter(w.number for w in self.words if w.number is not None and w.number != "1")

    @cached_property
    def units(self) -> frozenset[str]:
        return frozenset(w.unit for w in self.words if w.unit)

    @cached_property
    def quantities(self) -> frozenset[tuple[str, str]]:
        """(number, unit) for a unit at most two words after a number: "5 km", "100 US dollars"."""
        out = set()
        for k, word in enumerate(self.words):
            if word.number is not None:
                unit = next((w.unit for w in self.words[k + 1 : k + 3] if w.unit or w.number), None)
                if unit:
                    out.add((word.number, unit))
        return frozenset(out)

    @cached_property
    def negations(self) -> list[str]:
        return [w.lower for w in self.words if w.lower in NEGATIONS]

    @cached_property
    def content(self) -> list[Word]:
        """The words that carry the question's meaning: no stopwords or framing, no numbers."""
        return [w for w in self.words if w.number is None and not w.stopword]

    @cached_property
    def roles(self) -> dict[str, tuple[str, str]]:
        """canonical form -> (role, lower) for content words and numbers that occur once. The role is the
        directional word before it ("from", "to", "than", ...) with at most one other content word in between,
        else "none"."""
        out: dict[str, tuple[str, str]] = {}
        marker, gap = "none", 0
        counts = Counter(w.canon for w in self.words)
        for word in self.words:
            if word.lower in ROLE_MARKERS:
                marker, gap = ROLE_MARKERS[word.lower], 0
            elif not word.stopword:
                if counts[word.canon] == 1:
                    out[word.canon] = (marker if gap <= 1 else "none", word.lower)
                gap += 1
        return out


@lru_cache(maxsize=16384)
def stem(word: str) -> str:
    """A light suffix stemmer: irregular forms, British spellings, plurals, -ing, -ed, -ly, a final -e."""
    word = IRREGULAR.get(word, word)
    if len(word) <= 3 or word in STEM_KEEP or not word.isalpha():
        return word
    for pattern, replacement in BRITISH:
        word = pattern.sub(replacement, word) if len(word) > 6 else word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith(("sses", "ches", "shes", "xes", "zes")) or (word.endswith("oes") and len(word) > 5):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix, minimum in (("ing", 3), ("ed", 3), ("ly", 4)):
        base = word[: -len(suffix)]
        if word.endswith(suffix) and len(base) >= minimum and not word.endswith("eed") and VOWEL.search(base):
            word = base[:-1] + "y" if suffix == "ly" and base.endswith("i") else base
            break
    if len(word) > 4 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]  # running -> runn -> run
    if len(word) > 3 and word.endswith("e") and not word.endswith(("ee", "ie")):
        word = word[:-1]  # make/making -> mak
    return word


def adjective_forms(base: str) -> tuple[str, str, str]:
    """``base`` with its comparative and superlative: fast, faster, fastest; big, bigger; early, earlier."""
    if len(base) <= 2 or not base.isalpha():
        return base, base, base
    if base.endswith("e"):
        return base, base + "r", base + "st"
    root = base[:-1] + "i" if base.endswith("y") else base
    if len(base) <= 4 and re.search(r"[^aeiou][aeiou][^aeiouwy]$", base):
        root = base + base[-1]  # big -> bigger
    return base, root + "er", root + "est"


# Synonyms, with comparatives and superlatives for adjectives that have an opposite: "quickest" -> "fastest".
GRADABLE = frozenset(word for pair in ANTONYMS for word in pair)
SYNONYM_OF = {
    stem(word_form): stem(canon_form)
    for canon, words in SYNONYMS.items()
    for word in words
    for word_form, canon_form in (
        zip(adjective_forms(word), adjective_forms(canon)) if canon in GRADABLE else [(word, canon)]
    )
}


@lru_cache(maxsize=16384)
def canonical(lower: str) -> str:
    """The word's canonical form: stemmed, then folded onto a synonym."""
    stemmed = stem(lower)
    return SYNONYM_OF.get(stemmed, stemmed)


STOP_CANONS = frozenset(canonical(word) for word in STOPWORDS)


def opposites_table() -> dict[str, set[str]]:
    """Every form of every word in ANTONYMS (as written and canonical, comparatives and superlatives included) ->
    the forms of its opposites."""
    table: dict[str, set[str]] = {}
    for left, right in ANTONYMS:
        for one, other in ((left, right), (right, left)):
            others = {form for word in adjective_forms(other) for form in (word, canonical(word))}
            for word in adjective_forms(one):
                table.setdefault(word, set()).update(others)
                table.setdefault(canonical(word), set()).update(others)
    return table


OPPOSITE = opposites_table()


def expand(lower: str) -> list[str]:
    """Contractions and clitics: "doesn't" -> does not, "it's" -> it, "years'" -> years."""
    if lower in CONTRACTIONS:
        return CONTRACTIONS[lower]
    if "'" not in lower:
        return [lower]
    if lower.endswith("n't"):
        return [lower[:-3], "not"]
    for clitic in CLITICS:
        if lower.endswith(clitic) and len(lower) > len(clitic):
            return [lower[: -len(clitic)]]
    return [lower]


def number_value(text: str) -> str:
    """Digits as a canonical string: "1,000" -> "1000", "$5" -> "5", "2.0" -> "2", "3.10" stays "3.10"."""
    text = text.lstrip("$€£¥").replace(",", "")
    if re.fullmatch(r"\d+\.0+", text):
        text = text.split(".")[0]
    return str(int(text)) if text.isdigit() else text


def roman_value(numeral: str) -> int:
    values = [ROMAN_VALUES[c] for c in numeral]
    return sum(-v if v < after else v for v, after in zip(values, values[1:] + [0]))


def tokens(text: str) -> list[tuple[str, str, bool]]:
    """(kind, text, starts a sentence) for each token; kinds: code, quoted, num, unit, word, op. Quoted phrases
    come first and their words again in place."""
    text = unicodedata.normalize("NFKC", text).translate(QUOTES)
    for pattern, replacement in PRE_SUBSTITUTIONS:
        text = pattern.sub(replacement, text)
    out = [("quoted", single or double, False) for double, single in QUOTED.findall(text)]
    text = SHORT_HYPHENATED.sub(r"\1\2", text).replace("-", " ")
    start = True
    for match in TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "stop":
            start = True
            continue
        if match.group("num"):
            number, suffix = match.group("num"), match.group("suffix").lower()
            if suffix == "k":  # 10k
                number, suffix = number + "000", ""
            out.append(("num", number, False))
            if suffix and suffix not in ORDINAL_SUFFIXES and not (suffix == "s" and len(number) == 4):  # 2nd, 1990s
                out.append(("unit", suffix, False))
            if match.group("percent"):
                out.append(("unit", "%", False))
        elif kind is not None:
            out.append((kind, match.group(kind), start))
        start = False
    return out


def capitalised_text(parts: list[tuple[str, str, bool]]) -> bool:
    """ALL CAPS or Title Case text, where capitals say nothing about names."""
    words = [text for kind, text, start in parts if kind == "word" and not start]
    return len(words) >= 3 and sum(w[0].isupper() for w in words) > 0.6 * len(words)


def names_something(surface: str, sentence_start: bool, caps_text: bool) -> bool:
    """A capitalised word not at a sentence start, an acronym, a mixed-case or code-like word."""
    if surface.lower() in STOPWORDS:
        return False
    if "_" in surface or MIXED_CASE.search(surface):
        return True  # snake_case, camelCase, iPhone, C++, node.js
    if caps_text or not surface[0].isupper() or surface == "I":
        return False
    return (len(surface) >= 2 and surface.isupper()) or not sentence_start


Piece = tuple[str, str, bool, str]  # surface, lower-case text, names something, kind (word, num, unit)


def parse(text: str) -> Question:
    """Break a question down into words with their numbers, units and canonical forms."""
    parts = tokens(text)
    caps_text = capitalised_text(parts)
    pieces: list[Piece] = []
    for k, (kind, surface, start) in enumerate(parts):
        if kind in ("code", "quoted", "op"):
            pieces.append((surface, " ".join(surface.lower().split()), True, "word"))
        elif kind == "num":
            pieces.append((surface, number_value(surface), False, "num"))
        elif kind == "unit":
            pieces.append((surface, surface.lower(), False, "unit"))
        elif ROMAN.match(surface) and not caps_text and k and parts[k - 1][1][:1].isupper():
            pieces.append((surface, str(roman_value(surface)), False, "num"))  # World War II, Henry VIII
        else:
            entity = names_something(surface, start, caps_text)
            pieces += [(surface, part, entity and part != "not", "word") for part in expand(surface.lower())]
    return Question(tuple(read_words(merge_phrases(pieces))))


def merge_phrases(pieces: list[Piece]) -> list[Piece]:
    """Known phrases become one word: "turn off" -> disable, "get rid of" -> remove."""
    out: list[Piece] = []
    k = 0
    while k < len(pieces):
        if pieces[k][1] in PHRASE_STARTS:
            for size in (3, 2):
                group = pieces[k : k + size]
                replacement = PHRASES.get(tuple(p[1] for p in group))
                if replacement is not None:
                    out.append((" ".join(p[0] for p in group), replacement, any(p[2] for p in group), "word"))
                    k += size
                    break
            else:
                out.append(pieces[k])
                k += 1
        else:
            out.append(pieces[k])
            k += 1
    return out


def read_words(pieces: list[Piece]) -> list[Word]:
    """Numbers (digits, number words, ordinals) and units get their canonical values; other words their forms."""
    words: list[Word] = []
    k = 0
    while k < len(pieces):
        surface, lower, entity, kind = pieces[k]
        previous = words[-1] if words else None
        after_number = previous is not None and (
            previous.number is not None
            or (previous.lower in ("degree", "degrees") and len(words) > 1 and words[-2].number is not None)
        )
        if kind == "num":
            words.append(Word(surface, lower, lower, number=lower))
        elif lower in NUMBER_STARTS:
            value, used = spelled_number([p[1] for p in pieces[k : k + 6]])
            words.append(Word(" ".join(p[0] for p in pieces[k : k + used]), lower, value, number=value))
            k += used
            continue
        elif lower == "second" and previous is not None and previous.lower in ("a", "per", "each", "every"):
            words.append(Word(surface, lower, "second", unit="second"))
        elif lower in ORDINAL_WORDS:
            value = str(ORDINAL_WORDS[lower])
            words.append(Word(surface, lower, value, number=value))
        elif (unit := unit_of(lower, after_number or kind == "unit")) is not None:
            words.append(Word(surface, lower, unit, unit=unit))
        else:
            words.append(Word(surface, lower, lower if " " in lower else canonical(lower), entity=entity))
        k += 1
    return words


def spelled_number(lowers: list[str]) -> tuple[str, int]:
    """A number written in words at the start of ``lowers`` and how many words it takes: "twenty five" -> 25."""
    if lowers[0] == "half":
        return "0.5", 1
    total, current, used = 0, 0, 0
    for lower in lowers:
        if lower in NUMBER_WORDS:
            current += NUMBER_WORDS[lower]
        elif lower in MULTIPLIERS:
            current = max(current, 1) * MULTIPLIERS[lower]
            if MULTIPLIERS[lower] > 100:
                total, current = total + current, 0
        else:
            break
        used += 1
    return str(total + current), used


def unit_of(lower: str, after_number: bool) -> str | None:
    """The canonical unit a word names; short symbols ("m", "in", "am") count only right after a number."""
    singular = lower[:-1] if lower.endswith("s") and len(lower) > 3 else lower
    if lower in UNIT_OF or (len(singular) > 2 and singular in UNIT_OF):
        return UNIT_OF.get(lower) or UNIT_OF[singular]
    return SHORT_UNITS.get(lower) if after_number else None


# --- comparing words ---------------------------------------------------------------------------------------------


def one_typo_apart(a: str, b: str) -> bool:
    """One insertion, deletion, substitution or swap of neighbouring letters turns ``a`` into ``b``."""
    if len(a) == len(b):
        diff = [k for k in range(len(a)) if a[k] != b[k]]
        swapped = len(diff) == 2 and diff[1] == diff[0] + 1 and (a[diff[0]], a[diff[1]]) == (b[diff[1]], b[diff[0]])
        return len(diff) == 1 or swapped
    if abs(len(a) - len(b)) != 1:
        return False
    short, long_ = sorted((a, b), key=len)
    k = next((k for k in range(len(short)) if short[k] != long_[k]), len(short))
    return short[k:] == long_[k + 1 :]


def same_word(a: Word, b: Word) -> bool:
    """Same canonical form; or, for words of five letters or more, one typo apart or one a short extension of the
    other ("invent"/"inventor")."""
    if a.canon == b.canon or a.lower == b.lower:
        return True
    short, long_ = sorted((a.canon, b.canon), key=len)
    if len(short) < 5 or not (short.isalpha() and long_.isalpha()):
        return False
    return (
        one_typo_apart(a.lower, b.lower)
        or one_typo_apart(short, long_)
        or (long_.startswith(short) and len(long_) - len(short) <= 3)
    )


def occurs_in(word: Word, others: list[Word] | tuple[Word, ...]) -> bool:
    return any(same_word(word, other) for other in others)


def listed(values: Iterable[object]) -> str:
    return ", ".join(sorted(str(v) for v in values)) or "none"


# --- the checks --------------------------------------------------------------------------------------------------


def check_numbers(a: Question, b: Question) -> str | None:
    if a.numbers == b.numbers:
        return None
    return (
        f"numbers differ: {listed((a.numbers - b.numbers).elements())} vs {listed((b.numbers - a.numbers).elements())}"
    )


def check_units(a: Question, b: Question) -> str | None:
    if a.units and b.units and a.units != b.units:
        return f"units differ: {listed(a.units - b.units)} vs {listed(b.units - a.units)}"
    if a.quantities and b.quantities and a.quantities != b.quantities:
        left = [f"{n} {u}" for n, u in a.quantities - b.quantities]
        right = [f"{n} {u}" for n, u in b.quantities - a.quantities]
        return f"units differ: {listed(left)} vs {listed(right)}"
    return None


def negated_by_prefix(word: Word, other: Question) -> str | None:
    """The word ``word`` negates with a prefix ("unsafe" -> "safe") when ``other`` has it and not ``word``."""
    if not word.lower.startswith(NEGATING_PREFIXES) or word.lower in other.forms:
        return None
    for prefix in NEGATING_PREFIXES:
        base = word.lower[len(prefix) :]
        if word.lower.startswith(prefix) and len(base) >= 3 and (base in other.forms or canonical(base) in other.forms):
            return base
    return None


def check_negation(a: Question, b: Question) -> str | None:
    if len(a.negations) != len(b.negations):
        extra = max(a.negations, b.negations, key=len)
        return f"negation differs: '{' '.join(extra)}' in one question only"
    for q, other in ((a, b), (b, a)):
        for word in q.words:
            if (base := negated_by_prefix(word, other)) is not None:
                return f"negation differs: {word.lower} vs {base}"
    return None


def check_opposites(a: Question, b: Question) -> str | None:
    """A word in ``a`` whose opposite is in ``b``, neither being in the other question."""
    for word in a.words:
        opposites = OPPOSITE.get(word.lower, set()) | OPPOSITE.get(word.canon, set())
        if not opposites or word.lower in b.forms or word.canon in b.forms:
            continue
        for other in b.words:
            if (other.lower in opposites or other.canon in opposites) and not {other.lower, other.canon} & a.forms:
                return f"opposite words: {word.lower} vs {other.lower}"
    return None


def check_roles(a: Question, b: Question) -> str | None:
    changed = [w for w in a.roles if w in b.roles and a.roles[w][0] != b.roles[w][0]]
    for x in changed:
        for y in changed:
            (ax, name_x), (ay, name_y), bx, by = a.roles[x], a.roles[y], b.roles[x][0], b.roles[y][0]
            if x < y and ax == by and ay == bx:
                return f"roles swapped: {name_x} and {name_y} ({ax}/{ay} vs {bx}/{by})"
    # Otherwise the same words, with two of them (not next to each other) exchanged: "the Earth orbits the Sun".
    seq_a = [w.canon for w in a.words if not w.stopword]
    seq_b = [w.canon for w in b.words if not w.stopword]
    if len(seq_a) == len(seq_b) and Counter(seq_a) == Counter(seq_b):
        diff = [k for k in range(len(seq_a)) if seq_a[k] != seq_b[k]]
        if len(diff) == 2 and diff[1] - diff[0] > 1:
            names = [w.lower for w in a.words if not w.stopword]
            return f"roles swapped: {names[diff[0]]} and {names[diff[1]]} change places"
    return None


def name_in(word: Word, other: Question) -> bool:
    """``word`` (a name, or every word of a quoted phrase) occurs in ``other``."""
    if " " in word.lower:
        return all(part in other.forms or canonical(part) in other.forms for part in word.lower.split())
    return occurs_in(word, other.words)


def check_entities(a: Question, b: Question) -> str | None:
    only_a = list(dict.fromkeys(w.surface for w in a.words if w.entity and not name_in(w, b)))
    only_b = list(dict.fromkeys(w.surface for w in b.words if w.entity and not name_in(w, a)))
    if only_a and only_b:
        return f"entities differ: {' '.join(only_a)} vs {' '.join(only_b)}"
    if only_a or only_b:
        return f"entity in one question only: {' '.join(only_a or only_b)}"
    return None


def check_content(a: Question, b: Question) -> str | None:
    """A slot where the content words differ, with neither side's words anywhere in the other question."""
    words_a, words_b = a.content, b.content
    matcher = SequenceMatcher(a=[w.canon for w in words_a], b=[w.canon for w in words_b], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "replace" or i2 - i1 > 2 or j2 - j1 > 2:
            continue
        left, right = words_a[i1:i2], words_b[j1:j2]
        if not any(occurs_in(w, words_b) for w in left) and not any(occurs_in(w, words_a) for w in right):
            return f"different words: {' '.join(w.lower for w in left)} vs {' '.join(w.lower for w in right)}"
    return None


MAX_REASON = 160
CHECKS = (check_numbers, check_units, check_negation, check_opposites, check_roles, check_entities, check_content)


def veto(question: str, cached: str) -> str | None:
    """None when the answer cached for ``cached`` may answer ``question``; else why not, such as
    "numbers differ: 403 vs 404". Symmetric in its two arguments, apart from the order within the reason."""
    a, b = parse(question), parse(cached)
    for check in CHECKS:
        if (reason := check(a, b)) is not None:
            return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."
    return None
