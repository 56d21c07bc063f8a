"""The hot endpoints' shortcut past their serializers gives what the serializers give.

``plain_track_data`` and ``plain_check_data`` take the common, plainly valid bodies of
``billing/track`` (and each event of a batch) and ``billing/check`` without a DRF
serializer; anything else goes to the serializer, which words the errors. Whatever a
shortcut accepts, the serializer must accept as exactly the same data.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from kernia_billing.api.serializers import (
    CheckSerializer,
    TrackSerializer,
    plain_check_data,
    plain_track_data,
)

LIMIT = 1_000_000_000

_texts = st.one_of(
    st.sampled_from(["messages", "k-1", "", " ", "messages "]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    st.text(alphabet=" \t\n\x00ab'\\\"é", max_size=6),
    st.text(alphabet="ab", min_size=99, max_size=102),
    st.text(alphabet="k", min_size=254, max_size=257),
)
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.integers(min_value=-(10**10), max_value=10**10),
    st.sampled_from([0, 1, -1, LIMIT, LIMIT + 1, -LIMIT, -LIMIT - 1]),
    st.floats(allow_nan=False),
    _texts,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
# Each key often holds a plausible value, so the bodies the shortcut takes are common.
_features = st.one_of(st.sampled_from(["messages", "k-1"]), _texts, _values)
_ints = st.one_of(st.integers(min_value=-3, max_value=3), _values)


def _bodies(**optional):
    """Half with a good feature key (the rest varies), half anything (owners too)."""
    keyed = st.fixed_dictionaries(
        {"feature": st.sampled_from(["messages", "k-1"])}, optional=optional
    )
    owners = {name: _values for name in ["userId", "organizationId", "customerId", "other"]}
    anything = st.fixed_dictionaries({}, optional={"feature": _features, **optional, **owners})
    return st.one_of(keyed, anything)


_track_bodies = _bodies(
    amount=_ints,
    idempotencyKey=st.one_of(_texts, _values),
    properties=st.one_of(st.dictionaries(st.text(max_size=2), _values, max_size=2), _values),
)
_check_bodies = _bodies(required=_ints, breakdown=st.one_of(st.booleans(), _values))


@given(body=st.one_of(_track_bodies, _values))
@hypothesis_settings(max_examples=500, deadline=None)
def test_the_track_shortcut_agrees_with_the_serializer(body):
    plain = plain_track_data(body, LIMIT)
    if plain is not None:
        assert plain == TrackSerializer().run_validation(body)


@given(body=st.one_of(_check_bodies, _values))
@hypothesis_settings(max_examples=500, deadline=None)
def test_the_check_shortcut_agrees_with_the_serializer(body):
    plain = plain_check_data(body, LIMIT)
    if plain is not None:
        assert plain == CheckSerializer().run_validation(body)


def test_the_shortcuts_take_the_common_bodies():
    for body in [
        {"feature": "messages"},
        {"feature": "messages", "amount": -3, "idempotencyKey": "k-1", "properties": {"a": 1}},
        {"feature": "messages", "idempotencyKey": None, "properties": None},
        {"feature": "messages", "idempotencyKey": ""},
    ]:
        assert plain_track_data(body, LIMIT) == TrackSerializer().run_validation(body)
    for body in [
        {"feature": "messages"},
        {"feature": "messages", "required": 0, "breakdown": True},
    ]:
        assert plain_check_data(body, LIMIT) == CheckSerializer().run_validation(body)


def test_owners_and_odd_text_go_to_the_serializer():
    assert plain_track_data({"feature": "messages", "userId": 3}, LIMIT) is None
    assert plain_check_data({"feature": "messages", "organizationId": "o"}, LIMIT) is None
    assert plain_track_data({"feature": " messages"}, LIMIT) is None  # DRF trims it
    assert plain_track_data({"feature": "messages", "idempotencyKey": "a\x00"}, LIMIT) is None
