"""Reading classes from Label Studio label configs: controls, kinds, aliases, safety, hierarchy."""

from __future__ import annotations

import json

import pytest

from planner.core.labels import ControlTag, LabelSchema, parse_label_config
from planner.errors import InputError, LabelConfigError

SCENE_AND_OBJECTS = """
<View>
  <Header value="Scene"/>
  <View style="display: flex">
    <Image name="image" value="$image"/>
    <View>
      <Header value="Time of day"/>
      <Choices name="time" toName="image" choice="single">
        <View><Choice value="day"/></View>
        <Choice value="night" alias="n"/>
      </Choices>
    </View>
  </View>
  <RectangleLabels name="objects" toName="image">
    <Label value="Car" background="red"/>
    <Label value="Wheelchair" alias="wc"/>
    <Label value="Car"/>
  </RectangleLabels>
  <TextArea name="notes" toName="image"/>
</View>
"""


def test_several_controls_in_nested_views() -> None:
    schema = parse_label_config(SCENE_AND_OBJECTS)
    assert schema.classes == ("day", "night", "Car", "Wheelchair")
    time, objects = schema.controls
    assert (time.tag, time.name, time.to_name, time.kind) == (
        "Choices",
        "time",
        "image",
        "classification",
    )
    assert time.labels == ("day", "night")
    assert (objects.kind, objects.result_type) == ("detection", "rectanglelabels")
    assert objects.labels == ("Car", "Wheelchair")  # the repeated Car is listed once
    assert dict(objects.aliases) == {"wc": "Wheelchair"}


def test_aliases_resolve_per_control() -> None:
    schema = parse_label_config(SCENE_AND_OBJECTS)
    assert schema.resolve("objects", "wc") == "Wheelchair"
    assert schema.resolve("objects", "Car") == "Car"
    assert schema.resolve("time", "n") == "night"
    assert schema.resolve("time", "wc") is None  # the alias belongs to another control
    assert schema.resolve("objects", "Bus") is None
    assert schema.resolve("renamed_control", "wc") == "Wheelchair"  # unknown control: any match


def test_same_label_in_two_controls_is_one_class() -> None:
    schema = parse_label_config(
        """<View><Image name="img" value="$image"/>
        <BrushLabels name="brush" toName="img">
          <Label value="Road"/><Label value="Lane"/>
        </BrushLabels>
        <PolygonLabels name="poly" toName="img">
          <Label value="Road"/><Label value="Kerb"/>
        </PolygonLabels>
        </View>"""
    )
    assert schema.classes == ("Road", "Lane", "Kerb")
    assert [c.kind for c in schema.controls] == ["segmentation", "polygon"]


@pytest.mark.parametrize(
    ("tool", "kind"),
    [
        ("Brush", "segmentation"),
        ("Polygon", "polygon"),
        ("Rectangle", "detection"),
        ("KeyPoint", "keypoint"),
        (None, "detection"),
    ],
)
def test_plain_labels_take_the_kind_of_their_tool(tool: str | None, kind: str) -> None:
    tool_tag = f'<{tool} name="tool" toName="img"/>' if tool else ""
    schema = parse_label_config(
        f"""<View><Image name="img" value="$image"/>{tool_tag}
        <Labels name="lab" toName="img"><Label value="A"/></Labels></View>"""
    )
    assert schema.controls[0].kind == kind


@pytest.mark.parametrize(
    ("tag", "kind"),
    [
        ("EllipseLabels", "detection"),
        ("KeyPointLabels", "keypoint"),
        ("PolygonLabels", "polygon"),
        ("BrushLabels", "segmentation"),
    ],
)
def test_region_control_kinds(tag: str, kind: str) -> None:
    schema = parse_label_config(
        f'<View><{tag} name="x" toName="i"><Label value="A"/></{tag}></View>'
    )
    assert schema.controls[0].kind == kind


def test_attribute_names_are_case_insensitive() -> None:
    schema = parse_label_config(
        '<View><choices name="c" toname="img"><choice value="yes"/></choices></View>'
    )
    assert (schema.controls[0].to_name, schema.classes) == ("img", ("yes",))


def test_no_countable_control_names_what_was_found() -> None:
    config = '<View><Image name="img" value="$image"/><TextArea name="t" toName="img"/></View>'
    with pytest.raises(LabelConfigError) as caught:
        parse_label_config(config)
    message = str(caught.value)
    assert "found tags View, Image, TextArea" in message
    assert "Choices, RectangleLabels, PolygonLabels, BrushLabels" in message


def test_controls_with_only_dynamic_labels_are_not_enough() -> None:
    config = '<View><Choices name="c" toName="img" value="$options"/></View>'
    with pytest.raises(LabelConfigError, match="Choices 'c' list no static labels"):
        parse_label_config(config)


def test_dynamic_control_is_kept_beside_static_ones() -> None:
    schema = parse_label_config(
        """<View><Choices name="dyn" toName="img" value="$options"/>
        <RectangleLabels name="box" toName="img"><Label value="Car"/></RectangleLabels></View>"""
    )
    assert [c.name for c in schema.controls] == ["dyn", "box"]
    assert schema.classes == ("Car",)
    assert schema.resolve("dyn", "Car") is None


@pytest.mark.parametrize(
    "config",
    [
        '<!DOCTYPE View [<!ENTITY x "Car">]><View><Choices name="c" toName="i">'
        '<Choice value="&x;"/></Choices></View>',
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
        "<lolz>&lol2;</lolz>",
        '<!DOCTYPE View [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><View><Choices name="c" '
        'toName="i"><Choice value="&xxe;"/></Choices></View>',
        '<!DOCTYPE View SYSTEM "http://example.com/evil.dtd"><View/>',
    ],
)
def test_doctype_and_entities_are_refused(config: str) -> None:
    with pytest.raises(LabelConfigError, match="DTDs or entities"):
        parse_label_config(config)


@pytest.mark.parametrize(
    "config",
    ["<View><Choices>", '<View><Choice value="&undefined;"/></View>', "not xml", "<a></b>"],
)
def test_malformed_xml_is_a_label_config_error(config: str) -> None:
    with pytest.raises(LabelConfigError, match="not well-formed XML"):
        parse_label_config(config)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("", "empty"),
        ('<View><Choices toName="i"><Choice value="a"/></Choices></View>', "no name attribute"),
        (
            '<View><Choices name="c" toName="i"><Choice alias="a"/></Choices></View>',
            "without a value",
        ),
        (
            '<View><Choices name="c" toName="i"><Choice value="a"/></Choices>'
            '<RectangleLabels name="c" toName="i"><Label value="b"/></RectangleLabels></View>',
            "control names repeat",
        ),
    ],
)
def test_config_errors_say_what_to_fix(config: str, message: str) -> None:
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(config)


BIRDS = """<View><Choices name="species" toName="img">
  <Choice value="sparrow"/><Choice value="finch"/><Choice value="eagle"/><Choice value="bird"/>
</Choices></View>"""


def test_hierarchy_with_known_and_parent_only_parents() -> None:
    schema = parse_label_config(
        BIRDS, hierarchy={"sparrow": "bird", "finch": "bird", "eagle": "raptor", "raptor": "bird"}
    )
    assert schema.parent_only == ("raptor",)
    assert schema.classes == ("sparrow", "finch", "eagle", "bird")  # parents are not counted
    assert schema.hierarchy["eagle"] == "raptor"


@pytest.mark.parametrize(
    ("hierarchy", "message"),
    [
        ({"sparrow": "sparrow"}, "class 'sparrow' is its own parent"),
        ({"sparrow": "finch", "finch": "sparrow"}, "cycle sparrow -> finch -> sparrow"),
        (
            {"sparrow": "a", "a": "b", "b": "a"},
            "cycle a -> b -> a",
        ),
        ({"sparow": "bird"}, "child 'sparow' is not a class"),
        ({"sparrow": ""}, "non-empty class name"),
    ],
)
def test_bad_hierarchies_name_the_class(hierarchy: dict[str, str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_label_config(BIRDS, hierarchy=hierarchy)


def test_with_hierarchy_validates_and_keeps_controls() -> None:
    schema = parse_label_config(BIRDS)
    birds = schema.with_hierarchy({"sparrow": "bird"})
    assert birds.controls == schema.controls
    assert dict(birds.hierarchy) == {"sparrow": "bird"}
    with pytest.raises(InputError, match="own parent"):
        schema.with_hierarchy({"bird": "bird"})


def test_schema_as_dict_is_json_ready() -> None:
    schema = parse_label_config(SCENE_AND_OBJECTS, hierarchy={"Wheelchair": "person"})
    data = json.loads(json.dumps(schema.as_dict()))
    assert data["classes"] == ["day", "night", "Car", "Wheelchair"]
    assert data["parent_only"] == ["person"]
    assert data["controls"][1]["aliases"] == {"wc": "Wheelchair"}


def test_schema_rejects_repeated_classes() -> None:
    control = ControlTag("Choices", "c", "i", "classification", ("a",))
    with pytest.raises(LabelConfigError, match="repeat"):
        LabelSchema(controls=(control,), classes=("a", "a"))
