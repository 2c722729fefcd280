"""parse_filters: both shapes clients send, and every way a value can be malformed."""

from __future__ import annotations

import json

import pytest

from ketch.api.filters import parse_filters
from ketch.errors import InvalidArgument


@pytest.mark.parametrize("text", [None, "", "  ", "{}"])
def test_nothing_means_no_filters(text: str | None) -> None:
    assert parse_filters(text) == {}


def test_docker_cli_map_shape() -> None:
    text = json.dumps({"label": {"a=b": True, "c": True}, "dangling": {"true": True}})
    assert parse_filters(text) == {"label": ["a=b", "c"], "dangling": ["true"]}


def test_docker_py_list_shape() -> None:
    text = json.dumps({"label": ["a=b", "c"], "name": ["web"]})
    assert parse_filters(text) == {"label": ["a=b", "c"], "name": ["web"]}


def test_false_entries_and_empty_filters_are_dropped() -> None:
    text = json.dumps({"label": {"a": False, "b": True}, "name": {"x": False}, "driver": []})
    assert parse_filters(text) == {"label": ["b"]}


def test_duplicates_dropped_order_kept() -> None:
    assert parse_filters('{"name": ["b", "a", "b"]}') == {"name": ["b", "a"]}


def test_allowed_set() -> None:
    allowed = ("label", "all")
    assert parse_filters('{"all": ["true"]}', allowed) == {"all": ["true"]}
    with pytest.raises(InvalidArgument) as err:
        parse_filters('{"label": ["x"], "until": ["1h"]}', allowed)
    assert str(err.value) == "invalid filter 'until'"


@pytest.mark.parametrize("text", ["{", "label=x", '{"a": [1', "nul"])
def test_bad_json(text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^invalid filters: "):
        parse_filters(text)


@pytest.mark.parametrize("text, field", [
    ('["label"]', "JSON object"),
    ('{"label": "a=b"}', "'label' must be an object or a list"),
    ('{"label": 3}', "'label' must be an object or a list"),
    ('{"label": [1]}', "'label' must be a list of strings"),
    ('{"label": ["a", null]}', "'label' must be a list of strings"),
    ('{"label": {"a": "yes"}}', "'label': 'a' must map to true or false"),
    ('{"label": {"a": 1}}', "'label': 'a' must map to true or false"),
])
def test_wrong_types_name_the_filter(text: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_filters(text)
    assert field in str(err.value)
