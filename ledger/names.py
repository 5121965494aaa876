"""Possible duplicate customers (SPEC §3): similar names in one store with one phone tail.

A customer is *identified* only by exact keys (phone, wechat_id, platform_user). This module looks
for the other kind of duplicate a front desk makes — the same person entered twice, under a second
phone or a misspelt name — and reports the pair for a person to review. It never merges and never
decides: joining two customers is the explicit ``customers.merged`` event.

A pair is reported only when the two customers share a store, share the last four digits of a phone
and have similar names. Names are never an identity key on their own (重名 is common: there are
hundreds of thousands of 张伟), so a name alone never makes a candidate.

How two names compare (`name_similarity`; the best rule that holds wins):

- 1.00 *same characters* (*same spelling* for latin names): equal once full-width forms are made
  half-width, traditional characters simplified (OpenCC ``t2s``), case folded, and spaces,
  punctuation, middle dots (·) and digits set aside: 张伟 = 張偉 = "张 伟";
  "Zhang Wei" = "zhangwei".
- 0.95 *same name in another order* / *same pinyin*, two latin spellings: "Wei Zhang" vs
  "Zhang Wei", "Lyu Bu" vs "Lv Bu".
- 0.90 *same pinyin*: a Chinese name and the latin spelling of its pinyin, in either order
  (张伟 vs "Zhang Wei", "zhangwei", "Wei Zhang").
- 0.88 *same pinyin, different characters*: homophones, 张伟 vs 张玮 — the usual slip of a pinyin
  input method. They do count as similar and are reported at the default threshold, ranked below
  exact characters; a threshold above 0.88 leaves them out.
- 0.86 *same pinyin by another reading*: a latin spelling of another reading of a polyphonic
  character (曾伟 vs "Ceng Wei"; as a surname 曾 is zeng).
- at most 0.80 *similar names*: 0.8 × the edit similarity (1 − Levenshtein / longer length) of
  the pinyin, or of the characters, when that is at least one half (张伟 vs 张伟明: 0.53). Below the
  default threshold: seen only when a reviewer asks for a lower one.
- 0.00 otherwise; an empty or missing name never matches anything, itself included.

Pinyin here is toneless, ü is written u (吕 → lu, as most romanised IDs and guests write it, so
吕 and 卢 count as homophones), a polyphonic surname takes its surname reading (单 shan, 曾 zeng,
解 xie, 区 ou, 朴 piao …), and a compound surname (欧阳, 司马, 尉迟 …) stays one name part.
Other readings of polyphonic characters are only tried against latin spellings: two Chinese names
that agree only through an unusual reading are not reported. A latin word that does not spell
pinyin ("Anna", "Smith") is kept whole.

The matcher does not compare every pair: customers are grouped by (store, last four phone digits),
and within a group only customers whose names share a match key (characters, pinyin, pinyin in any
order) are scored — unless the threshold asks for similar names (≤ 0.80), which scores every pair
of a group. Output is sorted; nothing depends on the order the cards came in.

Names are personal data: nothing here logs or prints them.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import opencc
from pypinyin import Style, lazy_pinyin, pinyin
from pypinyin.contrib.tone_convert import to_normal
from pypinyin.pinyin_dict import pinyin_dict

# --- scores ------------------------------------------------------------------------------

SAME_CHARACTERS = 1.0
SAME_NAME_OTHER_ORDER = 0.95
SAME_PINYIN = 0.90
SAME_PINYIN_OTHER_CHARACTERS = 0.88
SAME_PINYIN_OTHER_READING = 0.86
SIMILAR_NAMES_CEILING = 0.80
SIMILAR_NAMES_FLOOR = 0.5  # edit similarity below this is not "similar" at all

DEFAULT_THRESHOLD = 0.85

# --- surnames ----------------------------------------------------------------------------

# fmt: off
# Polyphonic characters read differently as a surname (多音字姓氏). Keys are simplified.
SURNAME_READINGS: dict[str, str] = {
    "单": "shan", "曾": "zeng", "解": "xie", "仇": "qiu", "区": "ou", "朴": "piao",
    "查": "zha", "盖": "ge", "乐": "yue", "缪": "miao", "种": "chong", "翟": "zhai",
    "尉": "wei", "召": "shao", "员": "yun", "秘": "bi", "宿": "su", "折": "she",
    "繁": "po", "句": "gou", "祭": "zhai", "能": "nai", "藏": "zang", "薄": "bo",
    "都": "du", "重": "chong", "覃": "qin", "长": "chang", "柏": "bai", "卜": "bu",
    "阚": "kan", "隗": "wei", "冼": "xian", "洗": "xian", "蕃": "pi", "贲": "ben",
    "眭": "sui", "车": "che", "贾": "jia", "陆": "lu", "万": "wan", "朝": "chao",
    "沈": "shen", "任": "ren", "那": "na", "牟": "mou", "殷": "yin", "莘": "shen",
    "叶": "ye", "石": "shi", "费": "fei", "曲": "qu", "相": "xiang",
}

# Compound surnames (复姓) with their readings. Keys are simplified.
COMPOUND_SURNAMES: dict[str, tuple[str, str]] = {
    "欧阳": ("ou", "yang"), "司马": ("si", "ma"), "上官": ("shang", "guan"),
    "诸葛": ("zhu", "ge"), "东方": ("dong", "fang"), "皇甫": ("huang", "fu"),
    "尉迟": ("yu", "chi"), "公孙": ("gong", "sun"), "慕容": ("mu", "rong"),
    "长孙": ("zhang", "sun"), "宇文": ("yu", "wen"), "司徒": ("si", "tu"),
    "司空": ("si", "kong"), "夏侯": ("xia", "hou"), "轩辕": ("xuan", "yuan"),
    "令狐": ("ling", "hu"), "钟离": ("zhong", "li"), "端木": ("duan", "mu"),
    "万俟": ("mo", "qi"), "单于": ("chan", "yu"), "澹台": ("tan", "tai"),
    "独孤": ("du", "gu"), "南宫": ("nan", "gong"), "西门": ("xi", "men"),
    "百里": ("bai", "li"), "呼延": ("hu", "yan"), "闻人": ("wen", "ren"),
    "东郭": ("dong", "guo"), "公羊": ("gong", "yang"), "赫连": ("he", "lian"),
    "申屠": ("shen", "tu"), "太叔": ("tai", "shu"), "濮阳": ("pu", "yang"),
    "淳于": ("chun", "yu"), "拓跋": ("tuo", "ba"), "完颜": ("wan", "yan"),
    "闾丘": ("lu", "qiu"), "第五": ("di", "wu"), "公冶": ("gong", "ye"),
    "宗政": ("zong", "zheng"), "乐正": ("yue", "zheng"), "鲜于": ("xian", "yu"),
    "左丘": ("zuo", "qiu"), "梁丘": ("liang", "qiu"), "谷梁": ("gu", "liang"),
}
# fmt: on

_MAX_OTHER_READINGS = 12
# Inside a latin word these mark a syllable boundary ("Xi'an", "Xiao-Ming"), not a new name part.
_JOINERS = frozenset("-\u2010\u2011'\u2019\u02bc`")


# --- the public records ------------------------------------------------------------------


@dataclass(frozen=True)
class NameKey:
    """The normalised forms of one person name, as the matcher compares them.

    ``characters``: simplified Chinese characters and lowercased latin letters, with spaces,
    punctuation, middle dots and digits removed (張偉 → 张伟, "Zhang Wei" → zhangwei).
    ``pinyin``: toneless syllables joined (zhangwei); a latin name that spells pinyin is cut into
    its syllables, any other latin word is kept whole. ``syllables`` and ``part_sizes`` keep the
    syllables in order and how many belong to each name part (surname, given name, or a word as
    written), so the order-insensitive forms can be built. ``other_readings`` are readings of
    polyphonic characters other than the preferred one (at most a dozen, one change each).
    """

    original: str
    characters: str
    pinyin: str
    syllables: tuple[str, ...] = ()
    part_sizes: tuple[int, ...] = ()
    other_readings: tuple[tuple[str, ...], ...] = ()
    has_chinese: bool = False

    @property
    def is_empty(self) -> bool:
        return not self.characters

    @property
    def pinyin_any_order(self) -> str:
        """The syllables sorted and spaced: "Wei Zhang" and 张伟 both give ``wei zhang``."""
        return _any_order(self.syllables)

    @property
    def parts_any_order(self) -> str:
        """The name parts sorted and spaced: "Lina Wang" and 王丽娜 both give ``lina wang``."""
        return _parts_any_order(self.syllables, self.part_sizes)


@dataclass(frozen=True)
class PersonCard:
    """What the matcher needs about one customer, and no other personal data."""

    customer_id: str
    store_ids: tuple[str, ...]
    names: tuple[str, ...]
    phone_last4: tuple[str, ...]


@dataclass(frozen=True)
class PossibleDuplicate:
    """Two customers a person should look at (``a`` < ``b``); never a merge."""

    a: str
    b: str
    store_id: str
    score: float
    reason: str


# --- name keys ---------------------------------------------------------------------------


def name_key(name: str | None) -> NameKey:
    """Normalise one person name for comparison; an empty or missing name gives an empty key."""
    return _name_key(name or "")


@lru_cache(maxsize=1 << 16)
def _name_key(name: str) -> NameKey:
    text = _t2s().convert(unicodedata.normalize("NFKC", name))
    words = _words(text)
    if not words:
        return NameKey(original=name, characters="", pinyin="")

    characters = "".join("".join(chunks) for _, chunks in words)
    has_chinese = any(is_han for is_han, _ in words)
    # Each name part is a list of syllable positions; each position lists its readings,
    # the preferred one first.
    parts: list[tuple[tuple[str, ...], ...]] = []
    all_han = all(is_han for is_han, _ in words)
    for index, (is_han, chunks) in enumerate(words):
        if not is_han:
            parts.append(tuple((syllable,) for syllable in _latin_syllables(chunks)))
        elif all_han and len(words) == 1 and 2 <= len(chunks[0]) <= 4:
            parts.extend(_han_name_parts(chunks[0]))
        else:
            # "张 伟", "欧阳·娜娜", or a surname alone ("曾"): the first word is read as a surname
            surname_first = all_han and index == 0 and (len(words) > 1 or len(chunks[0]) == 1)
            parts.append(_han_word_positions(chunks[0], as_surname=surname_first))

    positions = [position for part in parts for position in part]
    syllables = tuple(position[0] for position in positions)
    others: list[tuple[str, ...]] = []
    for at, position in enumerate(positions):
        for reading in position[1:]:
            others.append(syllables[:at] + (reading,) + syllables[at + 1 :])
    return NameKey(
        original=name,
        characters=characters,
        pinyin="".join(syllables),
        syllables=syllables,
        part_sizes=tuple(len(part) for part in parts if part),
        other_readings=tuple(others[:_MAX_OTHER_READINGS]),
        has_chinese=has_chinese,
    )


@lru_cache(maxsize=1)
def _t2s() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")


def _is_han(ch: str) -> bool:
    code = ord(ch)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x3134F
        or 0xF900 <= code <= 0xFAFF
        or ch == "〇"
    )


def _words(text: str) -> list[tuple[bool, list[str]]]:
    """Cut a name into words: (is Chinese, chunks). A Chinese word is one chunk; a latin word
    is split into chunks at hyphens and apostrophes. Everything else separates words."""
    words: list[tuple[bool, list[str]]] = []
    kind: bool | None = None  # True: Chinese run, False: letters run, None: between words
    chunks: list[str] = []
    chunk: list[str] = []

    def close_word() -> None:
        nonlocal kind, chunks, chunk
        if chunk:
            chunks.append("".join(chunk))
        if chunks and kind is not None:
            words.append((kind, chunks))
        kind, chunks, chunk = None, [], []

    for ch in text:
        if _is_han(ch):
            if kind is not True:
                close_word()
                kind = True
            chunk.append(ch)
        elif ch in _JOINERS:
            if kind is False and chunk:
                chunks.append("".join(chunk))
                chunk = []
            elif kind is True:
                close_word()
        elif unicodedata.category(ch).startswith("L"):
            letters = _fold_letter(ch)
            if kind is not False:
                close_word()
                kind = False
            chunk.append(letters)
        elif unicodedata.combining(ch):
            continue  # a stray accent: the letter it sits on is kept
        else:
            close_word()
    close_word()
    return words


def _fold_letter(ch: str) -> str:
    """Latin letters lose accents and case (Zhāng → zhang, ü → u); other scripts keep theirs."""
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    if base.isascii() and base.isalpha():
        return base.lower()
    return ch.casefold()


def _han_name_parts(word: str) -> list[tuple[tuple[str, ...], ...]]:
    """A Chinese name of two to four characters: surname (compound when listed) and given name."""
    if len(word) >= 3 and word[:2] in COMPOUND_SURNAMES:
        surname, given = word[:2], word[2:]
        reading = COMPOUND_SURNAMES[surname]
        surname_positions = tuple(
            _with_preferred(reading[i], _char_readings(ch)) for i, ch in enumerate(surname)
        )
    else:
        surname, given = word[0], word[1:]
        surname_positions = _han_word_positions(surname, as_surname=True)
    return [surname_positions, _han_word_positions(given, as_surname=False)]


@lru_cache(maxsize=1 << 14)
def _han_word_positions(word: str, *, as_surname: bool) -> tuple[tuple[str, ...], ...]:
    """Readings of each character of a Chinese word, in context, with its other readings after.
    (Cached: given names repeat far more than whole names do.)"""
    if as_surname and word in COMPOUND_SURNAMES:
        preferred = list(COMPOUND_SURNAMES[word])
    elif as_surname and word in SURNAME_READINGS:
        preferred = [SURNAME_READINGS[word]]
    else:
        preferred = [_fold_pinyin(s) for s in lazy_pinyin(word, style=Style.NORMAL)]
        if len(preferred) != len(word):
            preferred = [_char_readings(ch)[0] for ch in word]
    return tuple(
        _with_preferred(p, _char_readings(ch)) for p, ch in zip(preferred, word, strict=True)
    )


def _with_preferred(preferred: str, readings: tuple[str, ...]) -> tuple[str, ...]:
    return (preferred,) + tuple(r for r in readings if r != preferred)


@lru_cache(maxsize=1 << 14)
def _char_readings(ch: str) -> tuple[str, ...]:
    readings = pinyin(ch, style=Style.NORMAL, heteronym=True, errors=lambda s: [s])[0]
    folded = [_fold_pinyin(r) for r in readings if r]
    return tuple(dict.fromkeys(folded)) or (ch,)


def _fold_pinyin(reading: str) -> str:
    """Toneless pinyin with ü written u: lv → lu, nve → nue."""
    return reading.replace("v", "u").replace("ü", "u")


# --- latin spellings of pinyin -----------------------------------------------------------


@lru_cache(maxsize=1)
def _pinyin_syllables() -> frozenset[str]:
    """Every toneless Mandarin syllable pypinyin knows (ü as u), excluding m, n, ng and the like."""
    toned = {reading for readings in pinyin_dict.values() for reading in readings.split(",")}
    normal = {_fold_pinyin(to_normal(reading)) for reading in toned}
    return frozenset(
        s for s in normal if s.isascii() and s.isalpha() and any(v in s for v in "aeiou")
    )


def _latin_syllables(chunks: list[str]) -> list[str]:
    """Pinyin syllables of one latin word, or the word's chunks where they do not spell pinyin."""
    out: list[str] = []
    for chunk in chunks:
        out.extend(_segment(chunk) or [chunk])
    return out


@lru_cache(maxsize=1 << 14)
def _segment(chunk: str) -> tuple[str, ...] | None:
    """Cut one latin chunk into the fewest pinyin syllables; None when it is not pinyin.

    Pinyin puts an apostrophe before a syllable starting with a, o or e (Xi'an), so without one
    such a syllable is first tried only at the start (lina → li na, not lin a). Lyu/Lv/Nyu/Nv
    are read as lu/nu, like the ü of the Chinese side.
    """
    spelled = (
        chunk.replace("lyu", "lu").replace("nyu", "nu").replace("lv", "lu").replace("nv", "nu")
    )
    if not spelled.isascii() or not spelled.isalpha():
        return None
    for strict in (True, False):
        cut = _fewest_syllables(spelled, strict)
        if cut is not None:
            return cut
    return None


def _fewest_syllables(text: str, strict: bool) -> tuple[str, ...] | None:
    syllables = _pinyin_syllables()
    longest = 6  # "zhuang", "shuang", "chuang"
    best: list[tuple[str, ...] | None] = [None] * (len(text) + 1)
    best[len(text)] = ()
    for start in range(len(text) - 1, -1, -1):
        choice: tuple[str, ...] | None = None
        for end in range(min(len(text), start + longest), start, -1):  # longer first
            piece = text[start:end]
            rest = best[end]
            if piece not in syllables or rest is None:
                continue
            if strict and start > 0 and piece[0] in "aoe":
                continue
            candidate = (piece,) + rest
            if choice is None or len(candidate) < len(choice):
                choice = candidate
        best[start] = choice
    return best[0]


# --- comparing two names -----------------------------------------------------------------


def name_similarity(a: str | None, b: str | None) -> tuple[float, str]:
    """Score two person names 0..1 and say why, by the rules in the module docstring.

    Symmetric: ``name_similarity(a, b) == name_similarity(b, a)``; a non-empty name scores 1.0
    against itself. An empty or missing name scores (0.0, "").
    """
    return _similarity(name_key(a), name_key(b))


def _similarity(ka: NameKey, kb: NameKey) -> tuple[float, str]:
    if ka.is_empty or kb.is_empty:
        return (0.0, "")
    if ka.characters == kb.characters:
        return (SAME_CHARACTERS, "same characters" if ka.has_chinese else "same spelling")

    if not ka.has_chinese and not kb.has_chinese:
        sound = _same_sound(ka.syllables, ka.part_sizes, kb.syllables, kb.part_sizes)
        if sound is not None:
            shown = min(_spaced_parts(ka), _spaced_parts(kb))
            what = "same pinyin" if sound == "in order" else "same name in another order"
            return (SAME_NAME_OTHER_ORDER, f"{what} ({shown})")
    elif ka.has_chinese != kb.has_chinese:
        han, latin = (ka, kb) if ka.has_chinese else (kb, ka)
        if _same_sound(han.syllables, han.part_sizes, latin.syllables, latin.part_sizes):
            return (SAME_PINYIN, f"same pinyin ({_spaced(han.syllables)})")
        for reading in han.other_readings:
            if _same_sound(reading, han.part_sizes, latin.syllables, latin.part_sizes):
                return (
                    SAME_PINYIN_OTHER_READING,
                    f"same pinyin by another reading ({_spaced(reading)})",
                )
    elif ka.pinyin == kb.pinyin:
        shown = min(_spaced(ka.syllables), _spaced(kb.syllables))
        return (SAME_PINYIN_OTHER_CHARACTERS, f"same pinyin, different characters ({shown})")

    return _similar_names(ka, kb)


def _same_sound(
    a: tuple[str, ...], a_sizes: tuple[int, ...], b: tuple[str, ...], b_sizes: tuple[int, ...]
) -> str | None:
    """'in order' when the pinyin is spelt the same, 'any order' when only its order differs."""
    if "".join(a) == "".join(b):
        return "in order"
    if _any_order(a) == _any_order(b):
        return "any order"
    if _parts_any_order(a, a_sizes) == _parts_any_order(b, b_sizes):
        return "any order"
    return None


def _similar_names(ka: NameKey, kb: NameKey) -> tuple[float, str]:
    ratio = max(
        _edit_similarity(ka.pinyin, kb.pinyin),
        _edit_similarity(
            ka.pinyin_any_order.replace(" ", ""), kb.pinyin_any_order.replace(" ", "")
        ),
        _edit_similarity(ka.characters, kb.characters)
        if ka.has_chinese and kb.has_chinese
        else 0.0,
    )
    if ratio < SIMILAR_NAMES_FLOOR:
        return (0.0, "")
    first, second = sorted((_spaced(ka.syllables), _spaced(kb.syllables)))
    return (round(SIMILAR_NAMES_CEILING * ratio, 2), f"similar names ({first} ~ {second})")


def _edit_similarity(a: str, b: str) -> float:
    """1 − Levenshtein distance / longer length."""
    if not a or not b:
        return 0.0
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return 1.0 - previous[-1] / max(len(a), len(b))


def _spaced(syllables: tuple[str, ...]) -> str:
    return " ".join(syllables)


def _spaced_parts(key: NameKey) -> str:
    """A latin name shown by its words as written (anna smith), not cut into syllables."""
    return " ".join(_parts(key.syllables, key.part_sizes))


def _any_order(syllables: tuple[str, ...]) -> str:
    return " ".join(sorted(syllables))


def _parts(syllables: tuple[str, ...], sizes: tuple[int, ...]) -> list[str]:
    """The name parts (surname, given name, or words as written), each its syllables joined."""
    parts, at = [], 0
    for size in sizes:
        parts.append("".join(syllables[at : at + size]))
        at += size
    return parts


def _parts_any_order(syllables: tuple[str, ...], sizes: tuple[int, ...]) -> str:
    return " ".join(sorted(_parts(syllables, sizes)))


def _match_keys(key: NameKey) -> frozenset[tuple[str, str]]:
    """Keys two names share whenever they score above the "similar names" ceiling."""
    if key.is_empty:
        return frozenset()
    keys = {("characters", key.characters)}
    for reading in (key.syllables, *key.other_readings):
        keys.add(("pinyin", "".join(reading)))
        keys.add(("syllables", _any_order(reading)))
        keys.add(("parts", _parts_any_order(reading, key.part_sizes)))
    return frozenset(keys)


# --- possible duplicates -----------------------------------------------------------------


@dataclass(frozen=True)
class _Person:
    customer_id: str
    store_ids: tuple[str, ...]
    names: tuple[str, ...]
    phone_last4: tuple[str, ...]


def possible_duplicates(
    cards: Iterable[PersonCard], threshold: float = DEFAULT_THRESHOLD
) -> list[PossibleDuplicate]:
    """Pairs of customers to review as possibly one person (SPEC §3).

    A pair needs a store in common, the same last four phone digits and names scoring at least
    ``threshold`` (best over all their names). Cards with the same customer id are read as one
    customer. Each pair is reported once, at the first store and phone tail they share (sorted);
    the list is sorted by store, then score (highest first), then customer ids.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be above 0 and at most 1")
    people = _people(cards)
    keys = _KeyBook()
    pairs = _candidate_pairs(people, keys, every_pair=threshold <= SIMILAR_NAMES_CEILING)

    found: list[PossibleDuplicate] = []
    for i, j in sorted(pairs):
        first, second = people[i], people[j]
        score, why = _best_name_match(first, second, keys)
        if score <= 0.0 or score < threshold:
            continue
        store = min(set(first.store_ids) & set(second.store_ids))
        last4 = min(set(first.phone_last4) & set(second.phone_last4))
        found.append(
            PossibleDuplicate(
                a=first.customer_id,
                b=second.customer_id,
                store_id=store,
                score=score,
                reason=f"same store {store}, {why}, same last four digits {last4}",
            )
        )
    found.sort(key=lambda d: (d.store_id, -d.score, d.a, d.b))
    return found


class _KeyBook(dict[str, NameKey]):
    """Name keys of one run, made the first time a name is compared."""

    def __missing__(self, name: str) -> NameKey:
        key = self[name] = name_key(name)
        return key


def _people(cards: Iterable[PersonCard]) -> list[_Person]:
    """One record per customer id, sorted by id, with stores, names and phone tails cleaned."""
    seen: dict[str, tuple[set[str], set[str], set[str]]] = {}
    for card in cards:
        if card.customer_id not in seen:
            seen[card.customer_id] = (set(), set(), set())
        stores, names, tails = seen[card.customer_id]
        for store in _as_tuple(card.store_ids):
            if store and not store.isspace():
                stores.add(store.strip())
        for name in _as_tuple(card.names):
            if name and not name.isspace():
                names.add(name)
        for tail in _as_tuple(card.phone_last4):
            digits = _phone_tail(tail)
            if digits:
                tails.add(digits)
    return [
        _Person(cid, tuple(sorted(stores)), tuple(sorted(names)), tuple(sorted(tails)))
        for cid, (stores, names, tails) in sorted(seen.items())
    ]


def _phone_tail(tail: str | None) -> str | None:
    """Four ASCII digits (full-width digits accepted), or None."""
    if not tail:
        return None
    digits = tail.strip()
    if not (len(digits) == 4 and digits.isascii()):
        digits = unicodedata.normalize("NFKC", digits)
    return digits if len(digits) == 4 and digits.isascii() and digits.isdigit() else None


def _as_tuple(values: Iterable[str | None] | str | None) -> tuple[str | None, ...]:
    """A lone string where a tuple belongs is one value, not its characters."""
    if values is None:
        return ()
    if isinstance(values, str):
        return (values,)
    return tuple(values)


def _candidate_pairs(
    people: list[_Person], keys: _KeyBook, *, every_pair: bool
) -> set[tuple[int, int]]:
    """Index pairs (i < j) sharing a (store, phone tail) block and, unless every pair of a block
    is wanted, a name match key. Names are only normalised for blocks of two or more."""
    blocks: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, person in enumerate(people):
        if person.names:
            for store, tail in itertools.product(person.store_ids, person.phone_last4):
                blocks[(store, tail)].append(index)

    pairs: set[tuple[int, int]] = set()
    for members in blocks.values():
        if len(members) < 2:
            continue
        if every_pair:
            pairs.update(itertools.combinations(members, 2))
            continue
        by_match_key: dict[tuple[str, str], list[int]] = defaultdict(list)
        for index in members:
            person_keys = set().union(*(_match_keys(keys[name]) for name in people[index].names))
            for match_key in person_keys:
                by_match_key[match_key].append(index)
        for group in by_match_key.values():
            pairs.update(itertools.combinations(group, 2))
    return pairs


def _best_name_match(first: _Person, second: _Person, keys: _KeyBook) -> tuple[float, str]:
    """The best-scoring pair of names of two customers; ties go to the first reason in order."""
    best = (0.0, "")
    for name_a, name_b in itertools.product(first.names, second.names):
        score, why = _similarity(keys[name_a], keys[name_b])
        if score > best[0] or (score == best[0] and score > 0 and why < best[1]):
            best = (score, why)
    return best
