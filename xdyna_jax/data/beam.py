"""``build --beam``: the dataset build as an Apache Beam pipeline (``docs/DATA.md``, "At scale").

Same builder, other execution. ``datasets.build_dataset(..., pipeline=BeamPipeline(...))`` hands the TFDS
builder of the local build a PTransform per split instead of a Python generator; TFDS then runs one Beam
pipeline and writes the splits with its Beam writer, into the same ``array_record`` shards and metadata
files. In the pipeline the video paths are the elements (``beam.Create`` reshuffles them, so a runner
spreads them over its workers) and ``examples.video_examples``, the local build's per-video function, is the
body of ``VideoFn``: the same examples, whichever runs them.

Every video also gives one report line (frames, detections, or why it was rejected): written as text
files beside the dataset and summed after the run into ``build_report.json`` / ``rejects.jsonl`` exactly
as the local build counts them, and counted by Beam counters (namespace ``xdyna_build``: ``videos``,
``rejects``, ``examples``, ``frames``) that a runner's monitoring shows while it runs. A video that fails
in any way is a rejected line, not an exception, so one bad video never fails a bundle (and with it the
other videos of the bundle).

``--beam-options`` are Beam's own pipeline flags, checked here before anything is loaded or written:
malformed quoting, unknown flags, bad values and unknown runners are a ``UserError``. ``DirectRunner`` (the
default) runs on Beam's portable ``FnApiRunner``, the engine the DirectRunner itself uses for batch
pipelines once it has tried Prism, a binary it downloads: the local build must not need the network.
``--direct_num_workers=N --direct_running_mode=multi_processing`` gives N worker processes.

This module imports ``apache_beam`` (the ``beam`` extra) on import: only ``build --beam`` imports it.
"""
from __future__ import annotations

import json
import logging
import shlex
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

from xdyna_jax.cli import UserError

from .examples import VideoResult, video_examples


def _import_beam():
    root = logging.getLogger()
    guard = logging.NullHandler()
    # Beam's BigQuery client module warns through the root logger when apitools is absent: without a
    # handler there, that prints a line and configures root logging for everything after it
    root.addHandler(guard)
    try:
        import apache_beam
        from apache_beam.options import pipeline_options
    except ImportError as e:
        raise UserError(f"--beam: Apache Beam is not installed ({e}); install the `beam` extra "
                        f"(pip install -e '.[beam]')") from e
    finally:
        root.removeHandler(guard)
    return apache_beam, pipeline_options


beam, _po = _import_beam()

NAMESPACE = "xdyna_build"
COUNTERS = ("videos", "rejects", "examples", "frames")
DIRECT_NAMES = ("direct", "directrunner")


# ---------------------------------------------------------------- options

class _OptionsParser(_po._BeamArgumentParser):
    """Beam's own flag parser (it knows ValueProvider flags), failing with a ``UserError``."""

    def __init__(self, text: str):
        super().__init__(allow_abbrev=False, add_help=False)
        self.text = text

    def error(self, message):
        raise UserError(f"--beam-options {self.text!r}: {message}")


def parse_options(text: Optional[str]) -> tuple[Any, Any, str]:
    """``(PipelineOptions, runner, description)`` of a ``--beam-options`` string, or a ``UserError``.

    Beam itself drops unknown flags with a warning (a typo in ``--direct_num_workers`` would quietly
    build on one worker), so every flag is checked against the options classes Beam knows.
    """
    try:
        flags = shlex.split(text or "")
    except ValueError as e:
        raise UserError(f"--beam-options {text!r}: malformed ({e}); expected shell-quoted flags such as "
                        f"\"--direct_num_workers=2 --direct_running_mode=multi_processing\"") from e
    parser = _OptionsParser(text or "")
    classes = {str(cls): cls for cls in _po.PipelineOptions.__subclasses__()}  # as Beam collects them
    for cls in classes.values():
        cls._add_argparse_args(parser)
    known, unknown = parser.parse_known_args(flags)
    if unknown:
        raise UserError(f"--beam-options {text!r}: unknown option(s) {unknown} (Beam's pipeline options "
                        f"are flags such as --runner=..., --direct_num_workers=N)")
    name = known.runner or "DirectRunner"
    options = _po.PipelineOptions(flags)
    if isinstance(name, str) and name.lower() in DIRECT_NAMES:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        direct = options.view_as(_po.DirectOptions)
        n = direct.direct_num_workers
        if n is not None and n < 0:
            raise UserError(f"--beam-options {text!r}: --direct_num_workers={n}: expected >= 1 (0: one per core)")
        workers = f"{n} worker(s)" if n else "a worker per core"  # Beam's meaning of 0
        return options, FnApiRunner(), f"DirectRunner (FnApiRunner, {workers}, {direct.direct_running_mode})"
    from apache_beam.runners.runner import create_runner
    try:
        runner = create_runner(name)
    except (ValueError, ImportError, RuntimeError) as e:
        raise UserError(f"--beam-options --runner={name}: {e}") from e
    return options, runner, type(runner).__name__


# ---------------------------------------------------------------- the per-video transform

class VideoFn(beam.DoFn):
    """A ``(root, path)`` element -> its ``(key, example)`` pairs, plus one report line (tag ``report``).

    ``extras``: a picklable zero-argument callable returning ``(features, extra_fn)`` (e.g.
    ``encode.encoders_from_paths`` bound to its paths), called once per worker in ``setup``, so the
    encoders' weights are loaded where they run instead of being shipped with the pipeline.
    """

    def __init__(self, split: str, settings, conditions_fn, extras: Optional[Callable[[], tuple]] = None):
        self.split, self.settings, self.conditions_fn, self.extras = split, settings, conditions_fn, extras

    def setup(self):
        self._extra_fn = self.extras()[1] if self.extras is not None else None
        self._pool = ThreadPoolExecutor(max(1, self.settings.encode_threads))
        self._counters = {n: beam.metrics.Metrics.counter(NAMESPACE, n) for n in COUNTERS}

    def teardown(self):
        self._pool.shutdown()

    def process(self, element):
        root, path = element
        result = video_examples(self.split, Path(root), Path(path), self.settings, self.conditions_fn,
                                self._extra_fn, self._pool)
        if result.reject is None:
            self._counters["videos"].inc()
            self._counters["examples"].inc(len(result.examples))
            self._counters["frames"].inc(result.frames)
        else:
            self._counters["rejects"].inc()
        yield beam.pvalue.TaggedOutput("report", json.dumps(result.report_line()))
        yield from result.examples


class Videos(beam.PTransform):
    """The examples of one split's videos; the report lines go to ``report_prefix``-*.jsonl."""

    def __init__(self, split: str, root: str, files: list[str], fn: VideoFn, report_prefix: str):
        super().__init__()
        self.split, self.root, self.files, self.fn, self.report_prefix = split, root, files, fn, report_prefix

    def expand(self, pbegin):
        out = (pbegin
               | "Files" >> beam.Create([(self.root, f) for f in self.files])  # reshuffled: spread over workers
               | "Video" >> beam.ParDo(self.fn).with_outputs("report", main="examples"))
        _ = out.report | "Report" >> beam.io.WriteToText(self.report_prefix, file_name_suffix=".jsonl")
        return out.examples


class BeamPipeline:
    """``datasets.build_dataset(..., pipeline=...)``: run the per-video work as a Beam pipeline.

    ``options``: the ``--beam-options`` string (checked here). ``extras``: see ``VideoFn``.
    """

    def __init__(self, options: Optional[str] = None, extras: Optional[Callable[[], tuple]] = None):
        self.options, self.runner, self.description = parse_options(options)
        self.extras = extras
        self.counters: dict[str, int] = {}
        self._work: Optional[Path] = None
        self._splits: list[str] = []

    def download_config(self, tmp: Path):
        import tensorflow_datasets as tfds

        self._work = Path(tmp) / "_beam_reports"  # inside the build's temporary folder: removed with it
        return tfds.download.DownloadConfig(beam_runner=self.runner, beam_options=self.options)

    def transform(self, split: str, root: Path, files: list[Path], settings, conditions_fn):
        self._splits.append(split)
        return Videos(split, str(root), [str(p) for p in files], VideoFn(split, settings, conditions_fn, self.extras),
                      str(self._work / split / "report"))

    def finished(self, result) -> None:
        """Read the Beam counters of the finished pipeline (summed over the splits' steps)."""
        from apache_beam.metrics.metric import MetricsFilter

        self.counters = {n: 0 for n in COUNTERS}
        for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
            value = c.committed if c.committed is not None else c.attempted
            self.counters[c.key.metric.name] = self.counters.get(c.key.metric.name, 0) + int(value or 0)

    def add_to(self, report) -> None:
        """Add every video's report line to ``report`` in the local build's order (split, then path).

        Read from every file under the report folder: the written shards, or, when the pipeline failed
        before ``WriteToText`` finalized them (TFDS refusing an empty split), its temporary bundle files,
        whose bundles completed before any writer stage could start. A retried bundle may repeat lines.
        """
        lines = []
        for split in self._splits:
            rows = {}
            for f in sorted(p for p in (self._work / split).rglob("*") if p.is_file()):
                for ln in f.read_text().splitlines():
                    if ln.strip():
                        row = json.loads(ln)
                        rows[row["file"]] = row
            lines += sorted(rows.values(), key=lambda r: Path(r["file"]))
        for r in lines:
            report.add(VideoResult(r["split"], r["file"], frames=r["frames"], detections=r["detections"],
                                   misses=r["misses"], reject=r["reject"]))
        shutil.rmtree(self._work, ignore_errors=True)

    def summary(self) -> str:
        counts = ", ".join(f"{n} {self.counters.get(n, 0)}" for n in COUNTERS)
        return f"beam: {self.description}; counters: {counts}"
