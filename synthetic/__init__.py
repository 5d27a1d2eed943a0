"""Synthetic data in OFA's TSV formats, small enough to train on a CPU in minutes (the demo and the tests use it).

Images are coloured shapes on a plain background (:mod:`.scenes`) and every text describes what is drawn, so a
small model can learn it. One module per task writes its files, named like OFA's released ones:

  captions        caption_stage1_train.tsv (one caption a row: uniq-id, image-id, caption, object labels, base64
                  JPEG), caption_val.tsv and caption_test.tsv (one row an image, the 5 references joined by ``&&``),
                  caption_stage2_train.tsv (the stage-1 train images, one row an image)
  refcoco         refcoco{,plus,g}_*.tsv: uniq-id, image-id, expression, "x0,y0,x1,y1", base64 JPEG
  vqa             vqa_{train,val,test}.tsv and trainval_ans2label.pkl
  snli_ve         snli_ve_{train,dev,test}.tsv: uniq-id, image-id, base64 JPEG, hypothesis, caption, label
  image_classify  image_classify_{train,val,test}.tsv (base64 JPEG, label index, class name) and
                  class2label_new.pkl for 4 shape classes (each shape in any colour)
  bpe             bpe/encoder.json, bpe/vocab.bpe, bpe/dict.txt: a byte-level BPE readable by fairseq's GPT2BPE

:func:`.demo_set.make_demo_data` writes the whole set; ``python -m ofa_el.tools.make_demo_data`` is its command.
"""
