"""Public annotations (COCO captions, RefCOCO, VQAv2, SNLI-VE, ImageNet folders, a user's JSONL) to OFA's TSVs.

Each format module turns its inputs into :class:`~.entries.Entry` objects, one per image with the
rows that show it; :func:`~.writer.write_tsv_files` encodes the images in worker processes and
streams the rows to disk. ``python -m ofa_el.tools.make_tsv <format> --out DIR ...`` is the command.
"""
