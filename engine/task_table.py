"""What a user can ask of the engine: one table, read by the Engine, the CLI and the studio.

An `EngineTask` is a request (`generate`, `answer`, ...), named like the `Engine` method that makes
it; `needs` lists the model tasks (engine/instructions.Task: what a model was trained on, `t2i`,
`vqa`, ...) any of which enables it. Every other name a request goes by (the studio's "Ask" button)
is its `label` here, not a second vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from engine.instructions import Task


class EngineTask(str, Enum):
    def __str__(self) -> str:  # "generate" in messages and JSON, on every Python
        return self.value

    GENERATE = "generate"
    CAPTION = "caption"
    ANSWER = "answer"
    INPAINT = "inpaint"
    EDIT = "edit"
    SEGMENT = "segment"
    GROUND = "ground"
    LAYOUT = "layout"


# The sampling settings of an image request (engine/settings.GenerationSettings and n candidates).
GUIDED = ("n", "cfg", "temperature", "top_p")
GUIDED_CDK_RETRIEVAL = (*GUIDED, "cdk_alpha", "cdk_k", "retrieve")


@dataclass(frozen=True)
class TaskSpec:
    label: str  # buttons, menus, the job queue
    description: str  # what errors call it: "this model was not trained for <description>"
    needs: tuple[Task, ...]  # model tasks, any of which enables it
    output: Literal["image", "text", "seg"]
    prompt: Literal["required", "optional", "none"]  # the text it reads (prompt, question, instruction)
    method: str  # the Engine method that makes the request
    sampling: tuple[str, ...] = ()  # the sampling settings the method takes


T, S = EngineTask, TaskSpec
TASKS: dict[EngineTask, TaskSpec] = {
    T.GENERATE: S("Generate", "text-to-image generation", (Task.T2I,), "image", "required", "generate",
                  GUIDED_CDK_RETRIEVAL),
    T.CAPTION: S("Caption", "captioning", (Task.CAPTION, Task.CAPTION_INFILL), "text", "none", "caption"),
    T.ANSWER: S("Ask", "answering questions about images", (Task.VQA,), "text", "required", "answer"),
    T.INPAINT: S("Inpaint", "inpainting", (Task.INFILL,), "image", "optional", "inpaint", GUIDED),
    T.EDIT: S("Edit", "instruction editing", (Task.EDIT,), "image", "required", "edit", GUIDED),
    T.SEGMENT: S("Segment", "segmentation", (Task.SEGMENT,), "seg", "none", "segment"),
    T.GROUND: S("Regions", "generation from boxes", (Task.GROUNDED,), "image", "required", "ground", GUIDED),
    T.LAYOUT: S("Layout", "generation from a segmentation layout", (Task.SEG2IMG,), "image", "optional",
                "from_layout", GUIDED),
}
IMAGE_TASKS = frozenset(t for t, spec in TASKS.items() if spec.output == "image")
# What CM3 pretraining on caption-image documents teaches, for bundles whose config lists no tasks.
PRETRAINED_TASKS = (Task.T2I, Task.CAPTION_INFILL)


def enabled_tasks(trained: frozenset[str]) -> frozenset[EngineTask]:
    """The requests a model trained on these model tasks (instructions.Task values) can serve."""
    return frozenset(t for t, spec in TASKS.items() if trained.intersection(spec.needs))
