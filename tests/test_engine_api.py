"""One EngineAPI (engine/api.py): the real Engine and the studio's demo engine take the same requests
with the same parameters and defaults, serve tasks named by the one task table, and say so."""

from __future__ import annotations

import inspect

import pytest

from app.demo_engine import DemoEngine
from engine.api import EngineAPI
from engine.engine import Engine
from engine.errors import UnsupportedTaskError
from engine.task_table import GUIDED_CDK_RETRIEVAL, TASKS, EngineTask

METHODS = [name for name, _ in inspect.getmembers(EngineAPI, inspect.isfunction) if not name.startswith("_")]


def _parameters(function) -> list[tuple[str, object, object]]:
    """(name, kind, default) of every parameter: annotations are spelled differently in each module."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.fixture(scope="module")
def engines(tiny_bundle):
    return {"engine": Engine.load(tiny_bundle), "demo": DemoEngine(step_delay=0.0)}


def test_the_api_covers_every_task():
    assert sorted(METHODS) == sorted(spec.method for spec in TASKS.values())
    assert set(TASKS) == set(EngineTask)


@pytest.mark.parametrize("task", list(EngineTask))
def test_the_table_names_each_requests_sampling_settings(task):
    """The studio sends an image request exactly the settings the table lists: the method's own."""
    spec = TASKS[task]
    params = set(inspect.signature(getattr(Engine, spec.method)).parameters)
    expected = params & set(GUIDED_CDK_RETRIEVAL) if spec.output == "image" else set()
    assert set(spec.sampling) == expected


@pytest.mark.parametrize("cls", [Engine, DemoEngine])
@pytest.mark.parametrize("name", METHODS)
def test_both_engines_take_the_apis_parameters_and_defaults(cls, name):
    assert _parameters(getattr(cls, name)) == _parameters(getattr(EngineAPI, name)), f"{cls.__name__}.{name}"


@pytest.mark.parametrize("which", ["engine", "demo"])
def test_both_engines_describe_themselves_alike(engines, which):
    engine: EngineAPI = engines[which]
    assert isinstance(engine.model_id, str) and engine.model_id
    assert engine.provider in ("CPU", "CUDA")
    assert engine.tasks and all(type(t) is EngineTask for t in engine.tasks)
    assert isinstance(engine.seg_class_names, tuple) and engine.seg_class_names[0] == "background"
    assert engine.image_size == {"engine": 16, "demo": 64}[which] and isinstance(engine.unsupported, dict)


def test_the_demo_refuses_what_it_does_not_serve_like_the_engine():
    demo = DemoEngine(step_delay=0.0)
    for task in set(EngineTask) - demo.tasks:
        method = getattr(demo, TASKS[task].method)
        with pytest.raises(UnsupportedTaskError, match=TASKS[task].description):
            method(*_placeholder_args(task))


def _placeholder_args(task: EngineTask) -> tuple:
    import numpy as np

    image = np.zeros((64, 64, 3), np.uint8)
    return {EngineTask.GROUND: ("a red circle", [("circle", (0, 0, 10, 10))]),
            EngineTask.LAYOUT: (np.zeros((8, 8), np.int64),)}.get(task, (image,))


def test_the_demo_draws_the_shapes_worlds_own_vocabulary():
    """One copy of the Shapes World's names and colours, shared by the data generator and the demo."""
    from app import demo_engine
    from engine import shapes_world as world
    from training.data import shapes

    for name in ("KINDS", "COLORS", "POSITIONS", "CELL_CENTERS"):
        assert getattr(demo_engine, name) is getattr(world, name) is getattr(shapes, name), name
    assert demo_engine.BACKGROUNDS is world.PLAIN_BACKGROUNDS
    assert all(shapes.BACKGROUNDS[name][0] == ("plain", rgb) for name, rgb in world.PLAIN_BACKGROUNDS.items())
