"""The DreamBench protocol in edit mode: put each subject into reference scenes, score, tabulate.

For every method x subject x scene x prompt template (the 25 of `prompts_and_classes.txt`; live
templates for cats and dogs, object templates otherwise) x seed: edit the scene inside its mask
with the prompt `a [P] <class> ...` (or `a <class> ...` for a method without a concept), score it
(`scoring.score_edits`: CLIP-T against the prompt with the token removed, CLIP-I/DINO-I against
the subject's photos, MS-SSIM and background metrics against the unedited scene), and average per
method. Edits are saved as PNGs as they are made; a rerun reuses them (resume after interruption).

Concepts are an input: `Method.concept` is a callable subject -> (pipeline with the concept
loaded, its token), so trained concepts plug in without this module knowing how they are stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from lcd.edit.config import EditConfig
from lcd.edit.engine import EditItem, check_item, edit_images, known_concept_tokens
from lcd.errors import LcdError
from lcd.evaluate.background import LpipsModel
from lcd.evaluate.config import EvaluateConfig, SceneSpec
from lcd.evaluate.embedders import Embedders
from lcd.evaluate.scoring import ConceptTable, EditRecord, score_edits, summarize
from lcd.io.images import image_files, load_image, load_mask, save_png
from lcd.models.loader import LoadedPipeline
from lcd.models.pipeline import LoadedSD

PROMPTS_FILE = "prompts_and_classes.txt"
LIVE_CLASSES = ("dog", "cat")  # DreamBooth's live subjects (cat*, dog*) use the live templates
_TEMPLATE = re.compile(r"^'(.*)'\.format\(unique_token, class_token\),?$")


@dataclass(frozen=True)
class Subject:
    name: str
    class_word: str
    photos: tuple[Path, ...]

    @property
    def live(self) -> bool:
        return self.class_word in LIVE_CLASSES


@dataclass(frozen=True)
class DreamBench:
    root: Path
    classes: dict[str, str]
    object_templates: tuple[str, ...]
    live_templates: tuple[str, ...]

    def templates(self, subject: Subject) -> tuple[str, ...]:
        return self.live_templates if subject.live else self.object_templates


ConceptProvider = Callable[[Subject], tuple[LoadedPipeline, str]]


@dataclass
class Method:
    """A way of editing. Without `concept` the base pipeline edits with the class word only
    (the baseline, and what runs before training lands); with it the provider's pipeline edits
    with `a <token> <class>` (or without the token when use_token=False: the paper's Table 4)."""

    name: str
    pipeline: LoadedPipeline | None = None
    concept: ConceptProvider | None = None
    use_token: bool = True

    def resolve(self, subject: Subject) -> tuple[LoadedPipeline, str | None]:
        if self.concept is not None:
            lp, token = self.concept(subject)
            return lp, (token if self.use_token else None)
        if self.pipeline is None:
            raise LcdError(f"method {self.name!r} has neither a pipeline nor a concept provider", item=self.name)
        return self.pipeline, None


def folder_concepts(
    folders: Mapping[str, str | Path], install: Callable[[Path], tuple[LoadedPipeline, str]]
) -> ConceptProvider:
    """Concept provider from trained concept folders: subject name -> folder, and `install`, which
    loads one folder onto a pipeline and returns (pipeline, token) — lcd.train's loader once it is
    merged. Each folder is installed once; a subject without a folder is a recorded failure."""
    cache: dict[str, tuple[LoadedPipeline, str]] = {}

    def provide(subject: Subject) -> tuple[LoadedPipeline, str]:
        if subject.name not in folders:
            raise LcdError(f"no trained concept folder for subject {subject.name!r}", item=subject.name)
        if subject.name not in cache:
            folder = Path(folders[subject.name])
            if not folder.is_dir():
                raise LcdError(f"{folder}: concept folder not found", item=str(folder))
            cache[subject.name] = install(folder)
        return cache[subject.name]

    return provide


def concept_installer(load: Callable[[list[Path]], LoadedSD]) -> Callable[[Path], tuple[LoadedPipeline, str]]:
    """`install` for folder_concepts: `load([folder])` (lcd.models.pipeline.load_sd with the
    trained concept folder applied) -> (pipeline, the concept's first token). A fresh pipeline per
    folder, because applying a concept changes the UNet's K/V in place."""

    def install(folder: Path) -> tuple[LoadedPipeline, str]:
        sd = load([folder])
        return sd.lp, sd.tokens[0]

    return install


def concept_folders(specs: Sequence[str]) -> dict[str, Path]:
    """`--concept` values -> {subject: folder}: `SUBJECT=DIR`, or `DIR` whose name is the subject."""
    out: dict[str, Path] = {}
    for s in specs:
        name, _, folder = s.rpartition("=") if "=" in s else (Path(s).name, "", s)
        if not name or not folder:
            raise LcdError(f"--concept {s!r}: expected DIR or SUBJECT=DIR", item=s)
        if name in out:
            raise LcdError(f"--concept: two folders for subject {name!r}", item=name)
        out[name] = Path(folder)
    return out


@dataclass
class ProtocolResult:
    rows: list[dict]
    table: list[dict]  # per method
    subject_table: list[dict]  # per method x subject
    failures: list[dict] = field(default_factory=list)
    sheets: list[dict] = field(default_factory=list)  # reference | mask | edit paths for the report


def read_dreambench(root: str | Path) -> DreamBench:
    """Parse prompts_and_classes.txt: the subject -> class table and the two template lists."""
    root = Path(root)
    f = root / PROMPTS_FILE
    if not f.is_file():
        raise LcdError(f"{f}: DreamBench prompts file not found (evaluate.dreambench points to the dataset root)", item=str(f))
    classes: dict[str, str] = {}
    lists: dict[str, list[str]] = {"object": [], "live": []}
    section = None
    from lcd.io.documents import read_text_file

    for line in read_text_file(f, "DreamBench prompts file").splitlines():  # binary / UTF-16: one line naming it
        line = line.strip()
        if line == "Object Prompts":
            section = "object"
        elif line == "Live Subject Prompts":
            section = "live"
        elif section and (m := _TEMPLATE.match(line)):
            lists[section].append(m.group(1))
        elif section is None and "," in line and line != "subject_name,class":
            name, cls = line.split(",", 1)
            classes[name.strip()] = cls.strip()
    if not classes or len(lists["object"]) != 25 or len(lists["live"]) != 25:
        raise LcdError(f"{f}: expected a class table and 2 x 25 templates, got {len(classes)} classes, "
                       f"{len(lists['object'])} object / {len(lists['live'])} live templates", item=str(f))
    return DreamBench(root, classes, tuple(lists["object"]), tuple(lists["live"]))


def load_subject(db: DreamBench, name: str) -> Subject:
    if name not in db.classes:
        raise LcdError(f"subject {name!r} is not in {PROMPTS_FILE} (known: {', '.join(sorted(db.classes))})", item=name)
    photos = tuple(image_files(db.root / name))
    if not photos:
        raise LcdError(f"{db.root / name}: subject {name!r} has no photos", item=name)
    return Subject(name, db.classes[name], photos)


def prompt_text(template: str, class_word: str, token: str | None) -> str:
    """'a {0} {1} in the snow' -> 'a [P] dog in the snow', or 'a dog in the snow' without a token
    (the CLIP-T text is always the token-free form)."""
    return " ".join(template.format(token or "", class_word).split())


def load_scene(spec: SceneSpec, size: int | None) -> tuple[str, np.ndarray, np.ndarray]:
    """-> (scene name, (S, S, 3) uint8, (S, S) bool). size resizes square (mask: nearest)."""
    img, mask = load_image(spec.image), load_mask(spec.mask)
    if img.shape[:2] != mask.shape:
        raise LcdError(f"{spec.mask}: mask {mask.shape} does not match scene {spec.image} {img.shape[:2]}", item=spec.mask)
    if size is not None:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS))
        mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
    if not mask.any():
        raise LcdError(f"{spec.mask}: mask is empty", item=spec.mask)
    return Path(spec.image).stem, img, mask


def run_protocol(
    methods: Sequence[Method], cfg: EvaluateConfig, edit_cfg: EditConfig, emb: Embedders,
    lpips_model: LpipsModel | None, out_dir: str | Path,
) -> ProtocolResult:
    """Edit, save, score and tabulate; returns rows, per-method and per-subject tables, failures."""
    out = Path(out_dir)
    # 1. check inputs
    names = [m.name for m in methods]
    if not methods or len(set(names)) != len(names) or any(not re.fullmatch(r"[\w.\-]+", n) for n in names):
        raise LcdError(f"methods need unique names of letters, digits, '_', '.', '-'; got {names}", item="methods")
    if not cfg.subjects or not cfg.scenes:
        raise LcdError("evaluate.subjects and evaluate.scenes must not be empty", item="evaluate")
    db = read_dreambench(cfg.dreambench)
    subjects = [load_subject(db, s) for s in cfg.subjects]
    scenes = [load_scene(s, cfg.scene_size) for s in cfg.scenes]
    # 2. concept photo embeddings, once per subject
    concepts = ConceptTable(emb, {s.name: [load_image(p) for p in s.photos] for s in subjects})
    rows, failures, sheets = [], [], []
    for method in methods:
        for subject in subjects:
            # 3. the method's pipeline and token for this subject
            try:
                lp, token = method.resolve(subject)
            except LcdError as e:
                failures.append({"method": method.name, "subject": subject.name, "item": e.item, "error": str(e)})
                continue
            items, meta = _items(db, subject, scenes, cfg, token)
            # 4. edit (or reuse saved edits), 5. score
            where = {"method": method.name, "subject": subject.name}
            try:
                edits = _edit_or_resume(lp, items, edit_cfg, out / "edits" / method.name / subject.name, token,
                                        failures, method.name, subject.name)
            except LcdError as e:  # one method x subject failing does not sink the run
                failures.append(where | {"item": e.item, "error": str(e)})
                continue
            records = {it.name: EditRecord(it.name, edits[it.name], it.image, it.mask, meta[it.name]["clip_text"],
                                           subject.name) for it in items if it.name in edits}
            scored_failures: list[dict] = []
            for row in score_edits(list(records.values()), concepts, emb, lpips_model, cfg, failures=scored_failures):
                name = row["name"]
                rows.append(where | meta[name] | row)
                if meta[name]["prompt_index"] == 0 and meta[name]["seed"] == cfg.seeds[0]:
                    sheets.append(_sheet_entry(out, method.name, subject.name, records[name], meta[name]))
            failures += [where | f for f in scored_failures]
    return ProtocolResult(rows, summarize(rows, ("method",)), summarize(rows, ("method", "subject")), failures, sheets)


def _items(db, subject, scenes, cfg, token):
    items, meta = [], {}
    for scene_name, img, mask in scenes:
        for pi, template in enumerate(db.templates(subject)[: cfg.n_prompts]):
            for seed in cfg.seeds:
                name = f"{scene_name}-p{pi:02d}-s{seed}"
                items.append(EditItem(img, mask, prompt_text(template, subject.class_word, token), seed, name))
                meta[name] = {"scene": scene_name, "prompt_index": pi, "seed": seed, "prompt": items[-1].prompt,
                              "clip_text": prompt_text(template, subject.class_word, None)}
    return items, meta


def _edit_or_resume(lp, items, edit_cfg, folder: Path, token, failures, method, subject) -> dict[str, np.ndarray]:
    """Edit the items whose PNG is missing; load the rest. Bad items are recorded, not fatal."""
    done = {it.name: load_image(folder / f"{it.name}.png") for it in items if (folder / f"{it.name}.png").exists()}
    todo = []
    known = known_concept_tokens(lp.pipe.tokenizer)
    for it in items:
        if it.name in done:
            continue
        try:
            check_item(it, known, [token] if token else [])
            todo.append(it)
        except LcdError as e:
            failures.append({"method": method, "subject": subject, "item": it.name, "error": str(e)})
    if todo:
        results = edit_images(lp, todo, edit_cfg, required_tokens=[token] if token else [],
                              extra_meta={"method": method, "subject": subject})
        for it, res in zip(todo, results):
            save_png(folder / f"{it.name}.png", res.image, res.meta)
            done[it.name] = res.image
    return done


def _sheet_entry(out: Path, method: str, subject: str, rec: EditRecord, meta: dict) -> dict:
    """Save reference and mask once per scene so the report can show reference | mask | edit."""
    ref = out / "scenes" / f"{meta['scene']}.png"
    msk = out / "scenes" / f"{meta['scene']}-mask.png"
    if not ref.exists():
        save_png(ref, rec.reference)
    if not msk.exists():
        save_png(msk, np.repeat((rec.mask.astype(np.uint8) * 255)[..., None], 3, axis=2))
    edit = out / "edits" / method / subject / f"{rec.name}.png"
    return {"method": method, "subject": subject, "prompt": meta["prompt"], "reference": str(ref), "mask": str(msk),
            "edit": str(edit)}
