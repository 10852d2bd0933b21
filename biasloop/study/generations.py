"""The ``generations``, ``rounds`` and ``datasets`` lists of ``params.yaml``, written out for a count.

DVC templates have no arithmetic, so the ``foreach`` lists of ``dvc.yaml`` (``generations``;
``rounds`` with one ``{gen, prev, previous}`` item per later generation (``previous``: dataset prev's
folder); ``datasets`` with each generation's dataset for the captioner and classifier) are written out
here, for ``biasloop generations N`` and for study cells that vary the number of generations. (Not in
``core/``: every stage lists ``biasloop/core`` as a dep, and no stage runs this.)
"""

from __future__ import annotations

from biasloop.core.config import dataset_folder


def rewrite_generations(text: str, count: int) -> str:
    """Return params.yaml ``text`` with the ``generations``, ``rounds`` and ``datasets`` lists set for ``count``.

    ``generations`` lists 0 .. count-1 (generation 0 is trained on real data); ``rounds`` maps each
    later generation to its ``{gen, prev, previous}`` item (``previous``: the folder of dataset prev, which
    ``loop.mode: accumulate`` grows) (keys name the stages: ``mix@1``, ``retrain@1``);
    ``datasets`` (when the file has it) maps every generation to the dataset its captioner and
    classifier train on (``captioner@0`` reads the corpus, ``captioner@N`` the mix of generation N).
    Comments and other keys are kept as they are.
    """
    if count < 1:
        raise ValueError("generations: need at least 1")
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    found = set()
    while i < len(lines):
        line = lines[i]
        key = line.split(":", 1)[0]
        if key in ("generations", "rounds", "datasets") and not line.startswith((" ", "#")):
            found.add(key)
            comment = line[line.index("#") :] if "#" in line else ""
            if key == "generations":
                out.append(f"generations:  {comment}".rstrip())
                out.extend(f"- {n}" for n in range(count))  # the layout DVC writes (params.yaml's header)
            elif key == "datasets":
                out.append(f"datasets:  {comment}".rstrip())
                # Block mappings: DVC's writer wraps flow mappings longer than 80 characters.
                for n in range(count):
                    folder = dataset_folder(n)
                    dataset = f"{folder}/captions.parquet" if n == 0 else f"{folder}/dataset.parquet"
                    out.extend([f"  '{n}':", f"    gen: {n}", f"    dataset: {dataset}", f"    folder: {folder}"])
            else:
                out.append(f"rounds:  {comment}".rstrip())
                out.extend(
                    f"  '{n}': {{gen: {n}, prev: {n - 1}, previous: {dataset_folder(n - 1)}}}" for n in range(1, count)
                )
                if count == 1:
                    out[-1] = ("rounds: {}  " + comment).rstrip()
            i += 1
            while i < len(lines) and lines[i].startswith((" ", "-")) and lines[i].strip():
                i += 1
            continue
        out.append(line)
        i += 1
    missing = {"generations", "rounds"} - found
    if missing:
        raise ValueError(f"params file has no top-level {sorted(missing)} list")
    return "\n".join(out) + "\n"
