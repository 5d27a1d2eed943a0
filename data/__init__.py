"""OFA's data pipeline for caption and refcoco.

``tsv`` (seekable, sharded TSV rows and :class:`~.tsv.InvalidRowError`), ``text`` (GPT-2 BPE +
OFA dictionary, OFA's cleaning rules), ``ofa_dataset`` (images, token layout, collater,
batching), ``caption_dataset`` / ``refcoco_dataset`` (per-task preprocessing), ``caption_references``
(the one reader of caption references: datasets, CIDEr tables, ``tools/cider_table.py``), ``boxes``
(location bins, IoU), ``scoring`` (CIDEr-D, COCO metrics, Acc@0.5), ``dictionary``.
"""
