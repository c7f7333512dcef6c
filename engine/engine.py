"""The Engine: one loaded model bundle and the tasks it can do, each returned as a `Job`.

    engine = Engine.load()                      # the bundled model (engine.paths.default_bundle_dir())
    job = engine.generate("a red circle above a blue square", n=4, seed=7)
    for event in job:                           # Retrieved, Progress, PartialImage..., Finished
        ...

Everything that can be wrong with the input (an empty or too long prompt, a mask of the wrong size,
not an image, a task the model was not trained for) raises at job creation; a job itself never
raises, it ends with `Finished`, `Cancelled` or `Failed`. Prompts are cleaned (control characters
become spaces, runs of whitespace one space); a prompt longer than the model's context is refused
with its length in tokens, never silently cut: the artist decides what to drop.

Input images of any size are resized (stretched, not cropped) to the model's square size, so every
grid cell maps onto the whole picture; inpainting returns the input's size, other image tasks the
model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine import instructions
from engine.bundle import Bundle, content_digest
from engine.chat_prompt import ChatPrompt
from engine.errors import BadInputError, BundleError, UnsupportedTaskError
from engine.events import RetrievedDocument
from engine.formats import caption_image_doc, unconditional_image_prompt
from engine.jobs import Job
from engine.layout import check_box, layout_cells
from engine.sampling import MAX_CFG_SCALE, Argmax, guided_sampler
from engine.settings import DEFAULTS
from engine.task_table import TASKS, EngineTask, enabled_tasks
from engine.tasks import (
    Request,
    Retrieval,
    check_count,
    check_seed,
    clean_text,
    compositor,
    mask_cells,
    pixel_mask,
    resize,
    run,
    text_sampler,
    to_rgb_array,
)
from engine.text_tokenizer import TextTokenizer

MAX_CANDIDATES = 16
MAX_RETRIEVED = 8
ANSWER_TOKENS = 16


class Engine:
    def __init__(self, bundle: Bundle, backend, text_tokenizer: TextTokenizer, image_tokenizer,
                 retriever=None, bank=None) -> None:
        self.bundle, self.backend = bundle, backend
        self.vocab = bundle.vocab
        self.max_len: int = bundle.max_len
        self.text_tokenizer, self.image_tokenizer = text_tokenizer, image_tokenizer
        self.retriever, self.bank = retriever, bank
        config = bundle.config
        self.trained_tasks = bundle.trained_tasks
        self.chat_prompt = ChatPrompt.from_config(config)  # an imported chat model's prompt format
        self.tasks: frozenset[EngineTask] = enabled_tasks(self.trained_tasks)
        self.unsupported: dict[str, str] = dict(config.get("unsupported") or {})  # an importer says why
        self.image_size: int = image_tokenizer.image_size
        default_names = ["background", *(f"class {i}" for i in range(1, self.vocab.seg_size))]
        self.seg_class_names: tuple[str, ...] = tuple(config.get("seg_classes") or default_names)
        name = config.get("name") or bundle.root.name
        self.model_id: str = config.get("model_id") or f"{name}-{content_digest(bundle.manifest)[:8]}"
        self.provider: str = str(getattr(backend, "provider", "cpu")).upper()
        self._library = None

    @classmethod
    def load(cls, bundle_dir: str | Path | None = None, device: str = "auto") -> Engine:
        """Load and verify a bundle (None = the bundled model) and open its ONNX sessions."""
        from engine.image_tokenizer import ImageTokenizer
        from engine.paths import default_bundle_dir

        bundle = Bundle.load(default_bundle_dir() if bundle_dir is None else bundle_dir)
        if bundle.image_tokenizer_dir is None:
            raise BundleError(f"model bundle {bundle.root} has no image tokenizer")
        retriever = bank = None
        if bundle.retriever_dir is not None:
            from engine.retriever import OnnxRetriever

            retriever = OnnxRetriever.load(bundle.retriever_dir)
            if bundle.memory_dir is not None:
                from engine.memory import MemoryBank

                bank = MemoryBank.load(bundle.memory_dir)
        text_tokenizer = TextTokenizer.load(bundle.text_tokenizer_path)
        image_tokenizer = ImageTokenizer.load(bundle.image_tokenizer_dir)
        return cls(bundle, bundle.backend(device), text_tokenizer, image_tokenizer, retriever, bank)

    # -- retrieval ------------------------------------------------------------------------------------
    @property
    def library(self):
        """The artist's own reference images (engine.library.UserLibrary in the user data folder),
        searched beside the bundle's memory bank."""
        if self._library is None:
            if self.retriever is None:
                raise UnsupportedTaskError("this model has no retriever: it cannot use a reference library")
            from engine.library import UserLibrary

            self._library = UserLibrary(self.retriever)
        return self._library

    def _library_if_any(self):
        """The library, if it was opened or exists on disk: searching never creates one."""
        if self._library is None:
            from engine.library import LIBRARY_FILE
            from engine.paths import user_data_dir

            if not (user_data_dir() / "library" / LIBRARY_FILE).is_file():
                return None
        return self.library

    def retrieve(self, k: int, *, text: str | None = None, image: np.ndarray | None = None
                 ) -> list[tuple[RetrievedDocument, np.ndarray]]:
        """Up to k documents from the bundle's memory bank and the user library, best first, each as
        (what the user sees, the document's ids for the prompt), chosen by the bank's inference rules
        (the closest documents are kept: no anti-copy rule for a prompt, engine.memory.SelectionRules)."""
        if self.retriever is None or k <= 0:
            return []
        from engine.memory import INFERENCE_RULES, retrieve
        from engine.retriever import document_embeddings

        sources = {name: src for name, src in (("bundle", self.bank), ("library", self._library_if_any()))
                   if src is not None and len(src)}
        if not sources:
            return []
        try:
            query = document_embeddings(self.retriever, [text], [image])
        except BadInputError:  # e.g. a flat image embeds to nothing: retrieval is an aid, skip it
            return []
        rules = self.bank.inference_rules if self.bank is not None else INFERENCE_RULES
        out = []
        for name, doc_id, score in retrieve(list(sources.items()), query, k, rules=rules)[0]:
            doc_text, picture = sources[name].document(doc_id)
            parts, pixels = [], None
            if doc_text:
                parts.append(self.vocab.text_ids(self.text_tokenizer.encode(doc_text)))
            if picture is not None:
                if np.ndim(picture) == 3:  # the library keeps pixels (its thumbnails)
                    pixels, ids = self._image(picture)
                else:  # the memory bank keeps image codes
                    codes = np.asarray(picture, np.int64).reshape(self.vocab.image_grid)
                    pixels, ids = self.image_tokenizer.decode(codes), self.vocab.image_ids(codes.reshape(-1))
                parts.append(ids)
            # a caption-image document is `T <break> I`; a one-modality document is that modality
            ids = caption_image_doc(self.vocab, *parts) if len(parts) == 2 else parts[0]
            out.append((RetrievedDocument(doc_text or "", pixels, float(score), name), ids))
        return out

    # -- tasks ----------------------------------------------------------------------------------------
    def generate(self, prompt: str, *, n: int = 1, seed: int | None = None, cfg: float | None = DEFAULTS.cfg,
                 temperature: float = DEFAULTS.temperature, top_p: float = DEFAULTS.top_p,
                 cdk_alpha: float | None = DEFAULTS.cdk_alpha, cdk_k: int | None = DEFAULTS.cdk_k,
                 retrieve: int = DEFAULTS.retrieve) -> Job:
        """Text -> n candidate images in one batch, best first (retriever score). The guidance stream
        is the prompt with its text replaced by <mask:0>. seed None = a random one, reported."""
        self._require(EngineTask.GENERATE)
        text = clean_text(prompt, "prompt")
        if self.chat_prompt is not None:  # an imported model: its own template and guidance stream
            cond, uncond = self.chat_prompt.image_prompts(self.vocab, self.text_tokenizer, text)
        else:
            cond = instructions.prompt("t2i", self.vocab, self.text_tokenizer, text=text)
            uncond = unconditional_image_prompt(self.vocab)
        cond = self._fits(cond, "prompt")
        k = check_count(retrieve, "retrieve", 0, MAX_RETRIEVED)
        sampler, guided, settings = self._image_sampler(seed, n, cfg, temperature, top_p, cdk_alpha, cdk_k)
        settings.update(prompt=text, retrieve=k)
        request = Request(EngineTask.GENERATE, "image", cond, uncond if guided else None, sampler, settings,
                          n=settings["n"], retrieval=Retrieval(k, text=text), rerank_text=text)
        return Job(run(self, request), EngineTask.GENERATE)

    def ground(self, prompt: str, boxes: Sequence[tuple[str, Sequence[int]]], *, n: int = 1,
               seed: int | None = None, cfg: float | None = DEFAULTS.cfg,
               temperature: float = DEFAULTS.temperature, top_p: float = DEFAULTS.top_p) -> Job:
        """Text plus labelled boxes [(label, (x0, y0, x1, y1)) on the 0-255 grid] -> images."""
        self._require(EngineTask.GROUND)
        text = clean_text(prompt, "prompt")
        checked = [check_box(clean_text(label, "box label"), box) for label, box in boxes]
        cond = instructions.prompt("grounded", self.vocab, self.text_tokenizer, text=text, boxes=checked)
        cond = self._fits(cond, "prompt")
        sampler, guided, settings = self._image_sampler(seed, n, cfg, temperature, top_p, None, None)
        settings.update(prompt=text, boxes=[[label, list(box)] for label, box in checked])
        uncond = unconditional_image_prompt(self.vocab) if guided else None
        request = Request(EngineTask.GROUND, "image", cond, uncond, sampler, settings, n=settings["n"],
                          rerank_text=text)
        return Job(run(self, request), EngineTask.GROUND)

    def from_layout(self, layout, prompt: str = "", *, n: int = 1, seed: int | None = None,
                    cfg: float | None = DEFAULTS.cfg, temperature: float = DEFAULTS.temperature,
                    top_p: float = DEFAULTS.top_p) -> Job:
        """A segmentation layout (class ids, the model's grid or any larger map: engine/layout.py),
        optionally with a caption -> images that follow it. Guidance (with a prompt only) contrasts
        the prompt with the same layout whose caption is <mask:0>."""
        self._require(EngineTask.LAYOUT)
        text = clean_text(prompt, "prompt", allow_empty=True) or None
        grid = layout_cells(layout, self.vocab.image_grid, self.vocab.seg_size)
        seg = self.vocab.seg_ids(grid.reshape(-1))
        build = instructions.prompt
        cond = self._fits(build("seg2img", self.vocab, self.text_tokenizer, seg_ids=seg, text=text), "prompt")
        cfg = cfg if text is not None else None  # nothing to guide towards without a prompt
        sampler, guided, settings = self._image_sampler(seed, n, cfg, temperature, top_p, None, None)
        settings.update(prompt=text or "", layout=grid.tolist())
        bare = build("seg2img", self.vocab, self.text_tokenizer, seg_ids=seg)  # ends "S <break>"
        uncond = np.concatenate([bare, [self.vocab.mask(0), self.vocab.brk]]) if guided else None
        request = Request(EngineTask.LAYOUT, "image", cond, uncond, sampler, settings, n=settings["n"],
                          rerank_text=text)
        return Job(run(self, request), EngineTask.LAYOUT)

    def caption(self, image, *, temperature: float | None = None, seed: int | None = None,
                retrieve: int = 0) -> Job:
        """Image -> caption; greedy unless a temperature is given."""
        self._require(EngineTask.CAPTION)
        pixels, ids = self._image(image)
        task = "caption" if "caption" in self.trained_tasks else "caption_infill"
        cond = instructions.prompt(task, self.vocab, self.text_tokenizer, image_ids=ids)
        k = check_count(retrieve, "retrieve", 0, MAX_RETRIEVED)
        sampler, settings = text_sampler(temperature, seed)
        settings["retrieve"] = k
        request = Request(EngineTask.CAPTION, "text", cond, None, sampler, settings,
                          retrieval=Retrieval(k, image=pixels))
        return Job(run(self, request), EngineTask.CAPTION)

    def answer(self, image, question: str, *, temperature: float | None = None,
               seed: int | None = None) -> Job:
        """Image + question -> a short answer; greedy unless a temperature is given."""
        self._require(EngineTask.ANSWER)
        question = clean_text(question, "question")
        _, ids = self._image(image)
        cond = instructions.prompt("vqa", self.vocab, self.text_tokenizer, image_ids=ids, text=question)
        cond = self._fits(cond, "question", reserve=ANSWER_TOKENS)
        sampler, settings = text_sampler(temperature, seed)
        settings["prompt"] = question
        request = Request(EngineTask.ANSWER, "text", cond, None, sampler, settings,
                          max_text_tokens=ANSWER_TOKENS)
        return Job(run(self, request), EngineTask.ANSWER)

    def segment(self, image) -> Job:
        """Image -> class grid (h, w) of indices into `seg_class_names`; greedy."""
        self._require(EngineTask.SEGMENT)
        _, ids = self._image(image)
        cond = instructions.prompt("segment", self.vocab, self.text_tokenizer, image_ids=ids)
        request = Request(EngineTask.SEGMENT, "seg", cond, None, Argmax(), {"greedy": True})
        return Job(run(self, request), EngineTask.SEGMENT)

    def edit(self, image, instruction: str, *, n: int = 1, seed: int | None = None,
             cfg: float | None = DEFAULTS.cfg, temperature: float = DEFAULTS.temperature,
             top_p: float = DEFAULTS.top_p) -> Job:
        """Image + instruction -> edited image(s). The guidance stream has the instruction as <mask:0>."""
        self._require(EngineTask.EDIT)
        instruction = clean_text(instruction, "instruction")
        _, ids = self._image(image)
        cond = instructions.prompt("edit", self.vocab, self.text_tokenizer, image_ids=ids, text=instruction)
        cond = self._fits(cond, "instruction")
        sampler, guided, settings = self._image_sampler(seed, n, cfg, temperature, top_p, None, None)
        settings["prompt"] = instruction
        # the prompt ends "... <break> instruction <break>": swap the instruction for <mask:0>
        n_instr = len(self.text_tokenizer.encode(instruction))
        uncond = np.concatenate([cond[: len(cond) - n_instr - 1], [self.vocab.mask(0), self.vocab.brk]])
        request = Request(EngineTask.EDIT, "image", cond, uncond if guided else None, sampler, settings,
                          n=settings["n"])
        return Job(run(self, request), EngineTask.EDIT)

    def inpaint(self, image, mask, prompt: str = "", *, n: int = 1, seed: int | None = None,
                cfg: float | None = DEFAULTS.cfg, temperature: float = DEFAULTS.temperature,
                top_p: float = DEFAULTS.top_p) -> Job:
        """Regenerate the masked pixels (mask (H, W): True / white = regenerate, or float coverage in
        [0, 1] that the result is blended by: engine.tasks.pixel_mask), optionally following a prompt.
        Known grid cells are forced while decoding and the result is composited in pixel space at the
        input's size: every pixel outside the mask comes back unchanged, bit for bit.
        Guidance (with a prompt only) contrasts the prompt with the same request without it."""
        self._require(EngineTask.INPAINT)
        hint = clean_text(prompt, "prompt", allow_empty=True) or None
        pixels, ids = self._image(image)
        alpha = pixel_mask(mask, pixels.shape[:2])
        region = mask_cells(alpha > 0, self.vocab.image_grid)
        build = instructions.prompt
        cond = build("infill", self.vocab, self.text_tokenizer, image_ids=ids, text=hint, region=region)
        cond = self._fits(cond, "prompt")
        cfg = cfg if hint is not None else None  # nothing to guide towards without a prompt
        sampler, guided, settings = self._image_sampler(seed, n, cfg, temperature, top_p, None, None)
        settings.update(prompt=hint or "", masked_cells=int(region.sum()))
        uncond = build("infill", self.vocab, self.text_tokenizer, image_ids=ids, region=region)
        request = Request(EngineTask.INPAINT, "image", cond, uncond if guided else None, sampler, settings,
                          n=settings["n"], rerank_text=hint, composite=compositor(pixels, alpha),
                          forced=instructions.infill_forced_ids(self.vocab, ids, region))
        return Job(run(self, request), EngineTask.INPAINT)

    # -- input checks ---------------------------------------------------------------------------------
    def _require(self, task: EngineTask) -> None:
        if task not in self.tasks:
            known = ", ".join(sorted(self.tasks)) or "nothing"
            why = self.unsupported.get(task)
            raise UnsupportedTaskError(
                f"this model was not trained for {TASKS[task].description} ({task}"
                + (f": {why}" if why else "") + f"); {self.model_id} can do: {known}"
            )

    def _fits(self, prompt_ids: np.ndarray, what: str, reserve: int | None = None) -> np.ndarray:
        """The prompt, unless it leaves less than `reserve` tokens of the context for the output."""
        reserve = self.vocab.image_tokens_per_image if reserve is None else reserve
        if len(prompt_ids) + reserve > self.max_len:
            text_tokens = int(np.sum(self.vocab.is_text(prompt_ids)))
            limit = max(self.max_len - reserve - (len(prompt_ids) - text_tokens), 0)
            raise BadInputError(f"the {what} is too long: {text_tokens} tokens, and this model reads at most "
                                f"{limit} tokens of {what} for this task; shorten it")
        return prompt_ids

    def _image(self, image) -> tuple[np.ndarray, np.ndarray]:
        """(pixels uint8 (H, W, 3), the image's H*W vocab ids) of a path or an array."""
        pixels = to_rgb_array(image)
        size = self.image_tokenizer.image_size
        codes = self.image_tokenizer.encode(resize(pixels, size, size))
        return pixels, self.vocab.image_ids(np.asarray(codes).reshape(-1))

    def _image_sampler(self, seed, n, cfg, temperature, top_p, cdk_alpha, cdk_k):
        """(sampler, guided?, settings) for an image span; every bad value is a BadInputError."""
        n = check_count(n, "n (candidates)", 1, MAX_CANDIDATES)
        seed = check_seed(seed)
        if (cdk_alpha is None) != (cdk_k is None):
            raise BadInputError("contrastive decoding needs both cdk_alpha and cdk_k")
        if cfg is not None and not (isinstance(cfg, (int, float)) and 0 <= cfg <= MAX_CFG_SCALE):
            raise BadInputError(f"cfg must be a number in [0, {MAX_CFG_SCALE:g}], got {cfg!r}")
        cdk = None if cdk_alpha is None else (cdk_alpha, cdk_k)
        # CFG at scale 1 is the conditional stream alone: skip the second stream unless CD-K needs it
        guided = cfg is not None and (cfg != 1.0 or cdk is not None)
        try:
            sampler = guided_sampler(seed, cfg_scale=cfg if guided else None, temperature=temperature,
                                     top_p=top_p, cdk=cdk)
        except (ValueError, TypeError) as exc:
            raise BadInputError(str(exc)) from None
        settings = {"seed": seed, "n": n, "cfg": cfg, "temperature": temperature, "top_p": top_p,
                    "cdk_alpha": cdk_alpha, "cdk_k": cdk_k, "provider": self.provider}
        return sampler, guided, settings
