"""On-disk formats: one module per kind of file, each holding its writer and its reader only.

  splits      data/prepared/{train,val,test}.npz and classes.json (real images, labels, class names)
  synthetic   data/synthetic/<set>/: shards, manifest.json, samples.png
  mixture     data/mixtures/<mix>.npz index files, and their pixels (with the rot90/vflip copies)
  classifier  models/<model>/<mix>/seed-<s>.pt trained classifiers (weights + normalisation)

Stages import these, never each other, so a stage's dvc.yaml deps are its own code plus the
formats it reads or writes. Every reader turns every way its file can be broken into one
`UserError` line naming the file, what is wrong and what to do.
"""
