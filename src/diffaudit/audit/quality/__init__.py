"""What the samples are worth: the exact NLL (``likelihood``), FID (``fid``), their stage (``stage``) and the utility test (``utility``)."""
