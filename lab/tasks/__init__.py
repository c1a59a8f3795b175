"""Model families as the train loop sees them: a model, its loss, its metrics (`lab.train.Task`)."""
