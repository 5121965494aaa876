"""Possible duplicates (SPEC §3): similar names, same store, same last four phone digits."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.names import (
    SAME_CHARACTERS,
    SAME_NAME_OTHER_ORDER,
    SAME_PINYIN,
    SAME_PINYIN_OTHER_CHARACTERS,
    SAME_PINYIN_OTHER_READING,
    SIMILAR_NAMES_CEILING,
    PersonCard,
    PossibleDuplicate,
    name_key,
    name_similarity,
    possible_duplicates,
)


def card(
    customer_id: str, name: str | None, last4: str = "5678", store: str = "sh-jingan"
) -> PersonCard:
    return PersonCard(customer_id, (store,), (name,) if name is not None else (), (last4,))


# --- name keys ---------------------------------------------------------------------------


def test_name_key_normalises_script_width_case_and_punctuation():
    assert name_key("張偉").characters == "张伟"
    assert name_key("张 伟").characters == "张伟"
    assert name_key("ＺＨＡＮＧ　Ｗｅｉ").characters == "zhangwei"
    assert name_key("买买提·艾力").characters == "买买提艾力"
    assert name_key("张伟").pinyin == "zhangwei"
    assert name_key("Zhāng Wěi").pinyin == "zhangwei"


def test_latin_key_has_an_order_insensitive_form():
    assert name_key("Wei Zhang").pinyin_any_order == name_key("zhang wei").pinyin_any_order
    assert name_key("zhangwei").syllables == ("zhang", "wei")
    assert name_key("Lina Wang").parts_any_order == name_key("王丽娜").parts_any_order


@pytest.mark.parametrize(
    "name, pinyin",
    [
        ("单田芳", "shantianfang"),  # not dan
        ("曾国藩", "zengguofan"),  # not ceng
        ("解缙", "xiejin"),  # not jie
        ("区家明", "oujiaming"),  # not qu
        ("朴志成", "piaozhicheng"),  # not pu
        ("欧阳娜娜", "ouyangnana"),
        ("司马懿", "simayi"),
        ("尉迟恭", "yuchigong"),
        ("万俟卨", "moqixie"),
        ("吕布", "lubu"),  # ü written u
    ],
)
def test_surnames_take_their_surname_reading(name, pinyin):
    assert name_key(name).pinyin == pinyin


def test_compound_surname_stays_one_name_part():
    assert name_key("欧阳娜娜").part_sizes == (2, 2)
    assert name_key("司马懿").part_sizes == (2, 1)


@pytest.mark.parametrize("empty", [None, "", "   ", "·", "（）", "123"])
def test_empty_names_have_an_empty_key(empty):
    assert name_key(empty).is_empty


# --- name similarity ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, score",
    [
        ("张伟", "张伟", SAME_CHARACTERS),
        ("张伟", "張偉", SAME_CHARACTERS),  # traditional
        ("张伟", "张　伟", SAME_CHARACTERS),  # full-width space
        ("张伟", "Zhang Wei", SAME_PINYIN),
        ("张伟", "zhangwei", SAME_PINYIN),
        ("张伟", "Wei Zhang", SAME_PINYIN),
        ("張偉", "Wei Zhang", SAME_PINYIN),
        ("Zhang Wei", "zhangwei", SAME_CHARACTERS),
        ("Zhang Wei", "Wei Zhang", SAME_NAME_OTHER_ORDER),
        ("ZHANG WEI", "wei, zhang", SAME_NAME_OTHER_ORDER),
        ("张伟", "张玮", SAME_PINYIN_OTHER_CHARACTERS),  # homophones count, below exact characters
        ("曾伟", "Zeng Wei", SAME_PINYIN),
        ("曾伟", "Ceng Wei", SAME_PINYIN_OTHER_READING),
        ("欧阳娜娜", "Nana Ouyang", SAME_PINYIN),
        ("王丽娜", "Lina Wang", SAME_PINYIN),
        ("王小明", "Xiao-Ming Wang", SAME_PINYIN),
        ("吕布", "Lyu Bu", SAME_PINYIN),
        ("Lv Bu", "Lyu Bu", SAME_NAME_OTHER_ORDER),
        ("买买提·艾力", "买买提艾力", SAME_CHARACTERS),
        ("买买提·艾力", "Maimaiti Aili", SAME_PINYIN),
    ],
)
def test_similar_names(a, b, score):
    got, reason = name_similarity(a, b)
    assert got == score
    assert reason


def test_reasons_name_the_rule_and_the_pinyin():
    assert name_similarity("张伟", "張偉") == (1.0, "same characters")
    assert name_similarity("张伟", "Wei Zhang") == (0.9, "same pinyin (zhang wei)")
    assert name_similarity("张伟", "张玮") == (
        0.88,
        "same pinyin, different characters (zhang wei)",
    )


def test_different_names_do_not_match():
    assert name_similarity("张伟", "李娜") == (0.0, "")
    assert name_similarity("张伟", "Li Na") == (0.0, "")
    score, _ = name_similarity("张伟", "张伟明")
    assert 0.0 < score < SIMILAR_NAMES_CEILING


@pytest.mark.parametrize("empty", [None, "", " ", "·"])
def test_empty_names_never_match(empty):
    assert name_similarity(empty, empty) == (0.0, "")
    assert name_similarity("张伟", empty) == (0.0, "")


_name_text = st.text(
    alphabet=st.sampled_from(list("张張伟偉玮王丽娜欧阳曾单解吕·  -'zhangweiLiNaÜüＺＷ１2.")),
    max_size=8,
)


@given(_name_text, _name_text)
def test_similarity_is_symmetric(a, b):
    assert name_similarity(a, b) == name_similarity(b, a)


@given(_name_text)
def test_a_name_is_identical_to_itself(a):
    score, _ = name_similarity(a, a)
    assert score == (0.0 if name_key(a).is_empty else 1.0)


# --- possible duplicates -----------------------------------------------------------------


def test_same_store_same_last4_similar_names_is_reported():
    found = possible_duplicates(
        [card("c-2", "Wei Zhang"), card("c-1", "張偉"), card("c-3", "李娜")]
    )
    assert found == [
        PossibleDuplicate(
            a="c-1",
            b="c-2",
            store_id="sh-jingan",
            score=0.9,
            reason="same store sh-jingan, same pinyin (zhang wei), same last four digits 5678",
        )
    ]


def test_examples_all_match_each_other():
    names = ["张伟", "張偉", "Zhang Wei", "zhangwei", "Wei Zhang"]
    found = possible_duplicates([card(f"c-{i}", n) for i, n in enumerate(names)])
    assert {(d.a, d.b) for d in found} == {
        (f"c-{i}", f"c-{j}") for i in range(len(names)) for j in range(i + 1, len(names))
    }


def test_different_last4_is_not_a_candidate():
    assert possible_duplicates([card("c-1", "张伟", "5678"), card("c-2", "张伟", "5679")]) == []


def test_different_store_is_not_a_candidate():
    assert (
        possible_duplicates(
            [card("c-1", "张伟", store="sh-jingan"), card("c-2", "张伟", store="sh-xuhui")]
        )
        == []
    )


def test_names_alone_never_make_a_candidate():
    cards = [
        PersonCard("c-1", ("sh-jingan",), ("张伟",), ()),
        PersonCard("c-2", ("sh-jingan",), ("张伟",), ()),
        PersonCard("c-3", (), ("张伟",), ("5678",)),
        PersonCard("c-4", (), ("张伟",), ("5678",)),
    ]
    assert possible_duplicates(cards) == []
    assert possible_duplicates(cards, threshold=0.01) == []


def test_missing_names_never_match():
    cards = [card("c-1", None), card("c-2", None), card("c-3", ""), card("c-4", "·")]
    assert possible_duplicates(cards, threshold=0.01) == []


def test_homophones_are_reported_below_exact_matches():
    found = possible_duplicates([card("c-1", "张伟"), card("c-2", "张玮"), card("c-3", "張偉")])
    assert [(d.a, d.b, d.score) for d in found] == [
        ("c-1", "c-3", 1.0),
        ("c-1", "c-2", 0.88),
        ("c-2", "c-3", 0.88),
    ]
    assert possible_duplicates([card("c-1", "张伟"), card("c-2", "张玮")], threshold=0.9) == []


def test_similar_names_only_below_the_default_threshold():
    cards = [card("c-1", "张伟"), card("c-2", "张伟明")]
    assert possible_duplicates(cards) == []
    [found] = possible_duplicates(cards, threshold=0.5)
    assert found.score < SIMILAR_NAMES_CEILING
    assert "similar names" in found.reason


def test_a_customer_with_several_names_stores_and_phones_is_matched_on_what_is_shared():
    cards = [
        PersonCard("c-9", ("sz-nanshan", "sh-jingan"), ("Nana", "欧阳娜娜"), ("1111", "5678")),
        PersonCard("c-4", ("sh-jingan",), ("Ouyang Nana",), ("5678",)),
    ]
    [found] = possible_duplicates(cards)
    assert (found.a, found.b, found.store_id, found.score) == ("c-4", "c-9", "sh-jingan", 0.9)
    assert found.reason.endswith("same last four digits 5678")


def test_cards_of_one_customer_are_never_paired_with_themselves():
    assert possible_duplicates([card("c-1", "张伟"), card("c-1", "張偉")]) == []


def test_threshold_must_be_a_score():
    with pytest.raises(ValueError):
        possible_duplicates([], threshold=0.0)
    with pytest.raises(ValueError):
        possible_duplicates([], threshold=1.5)


def test_output_does_not_depend_on_input_order():
    cards = [
        card("c-1", "张伟"),
        card("c-2", "Wei Zhang"),
        card("c-3", "张玮"),
        card("c-4", "李娜", "1234", "bj-chaoyang"),
        card("c-5", "Li Na", "1234", "bj-chaoyang"),
        card("c-6", "欧阳娜娜", "0000", "bj-chaoyang"),
        card("c-7", "Ouyang Nana", "0000", "bj-chaoyang"),
    ]
    expected = possible_duplicates(cards)
    assert [d.store_id for d in expected] == sorted(d.store_id for d in expected)
    rng = random.Random(7)
    for _ in range(20):
        shuffled = cards[:]
        rng.shuffle(shuffled)
        assert possible_duplicates(shuffled) == expected
        assert possible_duplicates(shuffled, threshold=0.3) == possible_duplicates(
            cards, threshold=0.3
        )


_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯"
    "邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
)
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红梅鑫斌宇浩凯健俊帆帅旭宁龙林欢阳"
_STORES = tuple(f"store-{i:02d}" for i in range(40))


def test_scale_100k_cards_with_planted_pairs():
    """Blocking keeps this near-linear; only completeness on planted pairs is asserted."""
    rng = random.Random(20240601)
    cards = []
    for i in range(100_000):
        name = rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.randint(1, 2)))
        cards.append(
            PersonCard(
                f"r-{i:06d}", (rng.choice(_STORES),), (name,), (f"{rng.randrange(10_000):04d}",)
            )
        )
    planted = [
        ("p-0001", "欧阳娜娜", "p-0002", "Nana Ouyang"),
        ("p-0003", "張偉", "p-0004", "zhangwei"),
        ("p-0005", "单田芳", "p-0006", "Shan Tianfang"),
        ("p-0007", "买买提·艾力", "p-0008", "买买提艾力"),
    ]
    for a, name_a, b, name_b in planted:
        cards.append(PersonCard(a, ("store-99",), (name_a,), ("4242",)))
        cards.append(PersonCard(b, ("store-99",), (name_b,), ("4242",)))

    found = possible_duplicates(cards)

    in_planted_store = [(d.a, d.b) for d in found if d.store_id == "store-99"]
    assert sorted(in_planted_store) == sorted((a, b) for a, _, b, _ in planted)
    by_id = {c.customer_id: c for c in cards}
    for d in found:
        first, second = by_id[d.a], by_id[d.b]
        assert d.a < d.b
        assert d.score >= 0.85
        assert d.store_id in first.store_ids and d.store_id in second.store_ids
        assert set(first.phone_last4) & set(second.phone_last4)
        assert d.score == name_similarity(first.names[0], second.names[0])[0]
    assert found == sorted(found, key=lambda d: (d.store_id, -d.score, d.a, d.b))


_store = st.sampled_from(["sh-jingan", "sh-xuhui"])
_tail = st.sampled_from(["5678", "1234"])


@given(
    st.lists(
        st.tuples(_store, _name_text, _tail, _name_text),
        min_size=2,
        max_size=12,
    )
)
def test_blocking_finds_every_pair_that_scoring_every_pair_finds(rows):
    """Match keys only skip pairs that could not reach the default threshold."""
    cards = [
        PersonCard(f"c-{i:02d}", (store,), (name, other), (tail,))
        for i, (store, name, tail, other) in enumerate(rows)
    ]
    every_pair = possible_duplicates(cards, threshold=0.5)
    assert possible_duplicates(cards) == [d for d in every_pair if d.score >= 0.85]
