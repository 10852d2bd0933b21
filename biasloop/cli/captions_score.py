"""``biasloop captions-score REFS HYPS``: BLEU-4, ROUGE-L and CIDEr-D of captions produced anywhere.

Scores with the same code as the captioner stage (:mod:`biasloop.metrics.caption_quality`), so captions made
by another model can be compared with the pipeline's numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Caption quality of hypotheses against references, as the COCO caption evaluation code defines it,
computed in Python (no Java; METEOR and SPICE are not computed).

REFS is a JSON object mapping each image id to a list of reference captions:
    {"img1": ["a nurse at work", "portrait of a nurse"], "img2": ["an engineer in uniform"]}
HYPS maps each image id to one hypothesis caption (a one-element list is accepted too):
    {"img1": "a nurse at work", "img2": "an engineer"}
Both must cover the same ids. Captions are lower-cased and stripped of punctuation first
(--no-tokenize: already space-tokenised).

  bleu1..bleu4  corpus BLEU with the closest reference length (fractions)
  rouge_l       mean ROUGE-L F-measure, beta 1.2 (fraction)
  cider_d       CIDEr-D: tf-idf n-grams 1..4, document frequencies from REFS, clipped, length
                penalty sigma 6, times 10
Exit status 2 on a bad file, naming the file and the problem.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "captions-score",
        help="BLEU-4, ROUGE-L and CIDEr-D of captions (two JSON files)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("references", metavar="REFS", help='JSON: {"image_id": ["reference", ...]}')
    parser.add_argument("hypotheses", metavar="HYPS", help='JSON: {"image_id": "hypothesis"}')
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    parser.add_argument("--no-tokenize", action="store_true", help="captions are already space-tokenised")
    parser.set_defaults(run=run)


def _read(path: str, kind: str) -> dict[str, Any]:
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{file}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from None
    except RecursionError:  # [[[[... deeper than Python's parser recurses
        raise ValueError(f"{file}: not valid JSON here (nested too deeply)") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{file}: expected a non-empty JSON object mapping image ids to {kind}")
    return data


def read_inputs(references_path: str, hypotheses_path: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Read and validate the two files; errors name the file and the image id."""
    references, hypotheses = _read(references_path, "lists of captions"), _read(hypotheses_path, "captions")
    for image_id, refs in references.items():
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"{references_path}: image {image_id!r}: expected a non-empty list of caption strings")
    clean: dict[str, str] = {}
    for image_id, hyp in hypotheses.items():
        if isinstance(hyp, list) and len(hyp) == 1:
            hyp = hyp[0]
        if not isinstance(hyp, str):
            raise ValueError(f"{hypotheses_path}: image {image_id!r}: expected one caption string")
        clean[image_id] = hyp
    missing, extra = sorted(set(references) - set(clean)), sorted(set(clean) - set(references))
    if missing or extra:
        raise ValueError(
            f"{hypotheses_path}: image ids differ from {references_path} "
            f"(no hypothesis for {missing[:5]}, no references for {extra[:5]})"
        )
    return references, clean


def run(args: argparse.Namespace) -> int:
    from biasloop.metrics.caption_quality import score_captions

    references, hypotheses = read_inputs(args.references, args.hypotheses)
    scores = score_captions(references, hypotheses, tokenize_first=not args.no_tokenize)
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        print(f"{scores['n_images']} images")
        for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d"):
            print(f"  {key:8s} {scores[key]:.4f}")
    return 0
