"""The shard files of a data set, as files: listing them (one listing per
pattern or directory, never a call per file: on gs:// each is a round
trip), their record counts (once per data set), and damage (which file,
found only after a read fails; `trainer.prepare --verify` reads them all).
The records inside are trainer/data.py's."""

import json
import logging
import os
import time

import numpy as np
import tensorflow as tf

from trainer import records
from trainer.errors import UserError
from trainer.errors import describe

log = logging.getLogger(__name__)

# The key of a counts file (beside the shards, or a model dir's
# example_counts.json) holding records per file.
PER_FILE_KEY = "records_per_file"


def list_files(pattern: str, flag_name: str) -> tuple[str, ...]:
  """Expands a pattern or directory (local or gs://) to sorted shard files,
  in one listing: no call per file (on gs:// each is a round trip).

  Raises:
    UserError: nothing matches (names the flag and the pattern).
  """
  expanded = os.path.expanduser(pattern)
  if tf.io.gfile.isdir(expanded):
    candidates = _files_in(expanded)
  else:
    candidates = tf.io.gfile.glob(expanded)
  files = sorted(
    f for f in candidates if ".tmp-" not in f and not f.endswith(".json")
  )
  if not files:
    raise UserError(f"--{flag_name}={pattern!r} matches no files")
  return tuple(files)


def _files_in(directory):
  return [
    os.path.join(directory, name) for name in list_directory(directory)[0]
  ]


def list_directory(directory):
  """(file names, subdirectory names) directly in `directory`, sorted, from
  one listing: a subdirectory is marked by the listing itself (a trailing /
  on gs://, the entry's type on local disk), not by a call per entry."""
  if "://" in directory:
    names = tf.io.gfile.listdir(directory)
    files = [n for n in names if not n.endswith("/")]
    subdirectories = [n.rstrip("/") for n in names if n.endswith("/")]
  else:
    with os.scandir(directory) as entries:
      kinds = [(entry.name, entry.is_dir()) for entry in entries]
    files = [name for name, is_dir in kinds if not is_dir]
    subdirectories = [name for name, is_dir in kinds if is_dir]
  return sorted(files), sorted(subdirectories)


# Beside a set of shards with no manifest: their record counts, written by
# the first run that counts them (or `trainer.prepare --index`) and read by
# every later run and worker.
COUNTS_SIDECAR = "record_counts.json"


def known_counts(files, counts_path):
  """Records per file without reading a record: the manifest beside the
  files wins, then the counts beside them, then the model dir's; None if
  any file is unknown."""
  directory = os.path.dirname(files[0])
  known = dict(_read_counts(counts_path).get(PER_FILE_KEY, {}))
  beside = _read_counts(os.path.join(directory, COUNTS_SIDECAR))
  for name, count in beside.get(PER_FILE_KEY, {}).items():
    known[os.path.join(directory, name)] = count
  manifest = records.read_manifest(directory) or {}
  for split in manifest.get("splits", {}).values():
    for shard in split.get("shards", []):
      known[os.path.join(directory, shard["file"])] = shard["num_examples"]
  if all(f in known for f in files):
    return tuple(known[f] for f in files)
  return None


def count_records(
  files,
  counts_path=None,
  remember=False,
  skip_corrupt=False,
  flag="train_data",
  wait_for_chief=False,
):
  """Records per file, in the order of `files`: the manifest or the counts
  beside the files, else `counts_path` (a model dir's record of an earlier
  count), else by reading every record (files in parallel), once per data
  set: the counts are then written beside the files (where writable and
  whole) and to `counts_path`.

  Args:
    files: the shard files.
    counts_path: JSON file of counts by file, or None.
    remember: write the counts to `counts_path`, and a fresh count beside
      the files (the chief does: the other workers wait for it).
    skip_corrupt: count the readable records of damaged files (and say
      which), instead of failing.
    flag: the flag the files came from (named by errors).
    wait_for_chief: wait for the chief's count instead of reading (the
      other workers of a cluster).

  Raises:
    UserError: a damaged file, named, without skip_corrupt; the chief's
      count not written within WAIT_FOR_CHIEF_SECS.
  """
  counts = known_counts(files, counts_path)
  if counts is None and wait_for_chief:
    return _wait_for_counts(files, counts_path)
  if counts is None:
    counts, whole = _count(files, skip_corrupt, flag)
    if remember and whole:
      write_counts_beside(files, counts)
  if remember and counts_path:
    # Always, wherever the counts came from: the workers that wait read
    # this file too.
    remembered = _read_counts(counts_path)
    remembered.setdefault(PER_FILE_KEY, {}).update(zip(files, counts))
    tf.io.gfile.makedirs(os.path.dirname(counts_path))
    records.write_text_atomically(counts_path, json.dumps(remembered) + "\n")
  return counts


def _count(files, skip_corrupt, flag):
  """(records per file, whether every file was whole), read in parallel."""
  log.info(
    f"--{flag}: no manifest or counts beside its {len(files)} file(s) in "
    f"{os.path.dirname(files[0])}: reading them to count their records "
    "(to skip this: --train_examples/--eval_examples, or python -m "
    "trainer.prepare --index PATTERN once)."
  )
  try:
    return count_each(files), True
  except tf.errors.DataLossError as e:
    if not skip_corrupt:
      raise UserError(damaged_data_message(e, [(flag, files)])) from None
  # A damaged file's count is what --skip_corrupt reads of it: not a fact
  # to share beside the files.
  return tuple(_readable_records(path, flag) for path in files), False


def write_counts_beside(files, counts):
  """COUNTS_SIDECAR beside `files` (one directory), where writable; says so
  where not. Returns its path, or None."""
  directory = os.path.dirname(files[0])
  if any(os.path.dirname(f) != directory for f in files):
    log.info("The files span several directories: no counts beside them.")
    return None
  path = os.path.join(directory, COUNTS_SIDECAR)
  known = _read_counts(path)
  known.setdefault(PER_FILE_KEY, {}).update(
    (os.path.basename(f), n) for f, n in zip(files, counts)
  )
  try:
    records.write_text_atomically(path, json.dumps(known, indent=1) + "\n")
  except (tf.errors.OpError, OSError) as e:
    log.warning(
      f"Could not write {path} ({describe(e)}): other model dirs count "
      "these files again."
    )
    return None
  return path


# How long a worker waits for the chief's count before it gives up (the
# chief may have failed: nothing else tells a worker outside a collective).
WAIT_FOR_CHIEF_SECS = 4 * 3600


def _wait_for_counts(files, counts_path, poll_secs=2.0):
  """The chief's count, once written (a worker does not read the data set
  a second time)."""
  started = last_said = time.time()
  log.info(f"Waiting for the chief's count of {len(files)} file(s).")
  while True:
    known = known_counts(files, counts_path)
    if known is not None:
      return known
    if time.time() - started > WAIT_FOR_CHIEF_SECS:
      raise UserError(
        f"the chief wrote no count of {len(files)} file(s) to {counts_path} "
        f"in {WAIT_FOR_CHIEF_SECS // 3600} h: see its output (a damaged "
        "file?); --train_examples/--eval_examples skip counting"
      )
    if time.time() - last_said > 300:
      last_said = time.time()
      log.info(f"Still waiting for the chief's count ({counts_path}).")
    time.sleep(poll_secs)


def count_each(files, ignore_errors=False):
  """Records in each file, read in parallel (eight files at a time) in one
  pipeline: a pipeline per file cost ~9 ms a file, 9.6 s for 1024 small
  shards where this takes 0.12 s.

  With ignore_errors (the readable records of damaged files), a file that
  cannot be opened at all raises, as without: ignore_errors would retry it
  forever."""
  if not files:
    return ()
  if ignore_errors:
    for path in files:
      if not tf.io.gfile.exists(path):
        raise tf.errors.NotFoundError(None, None, f"{path} does not exist")
  paths = tf.constant(list(files))

  def records_of(index):
    dataset = tf.data.TFRecordDataset(paths[index], buffer_size=8 << 20)
    if ignore_errors:
      dataset = dataset.ignore_errors()
    return dataset.map(lambda _: index)

  indices = tf.data.Dataset.range(len(files)).interleave(
    records_of, cycle_length=8, num_parallel_calls=8, deterministic=False
  )
  counts = np.zeros(len(files), np.int64)
  for batch in indices.batch(1 << 16).as_numpy_iterator():
    counts += np.bincount(batch, minlength=len(files))
  return tuple(int(n) for n in counts)


def verify_files(files):
  """[(file, readable records, problem or None)] of every file, read
  through (eight at a time): what `trainer.prepare --verify` reports."""
  readable = count_each(files, ignore_errors=True)
  return list(zip(files, readable, _problems(files)))


def _problems(files):
  """_read_problem of each file, eight files at a time."""
  from concurrent import futures

  with futures.ThreadPoolExecutor(8) as pool:
    return list(pool.map(_read_problem, files))


def _read_problem(path):
  """Why `path` cannot be read to its end as TFRecords, or None."""
  try:
    count_each([path])
  except tf.errors.DataLossError as e:
    return describe(e)
  return None


def _readable_records(path, flag):
  """--skip_corrupt's count of one file: its readable records, saying so
  when it is damaged."""
  problem = _read_problem(path)
  if problem is None:
    return count_each([path])[0]
  readable = count_each([path], ignore_errors=True)[0]
  log.warning(
    f"--{flag}: {path} is damaged ({problem}); --skip_corrupt counts its "
    f"{readable} readable records."
  )
  return readable


def damaged_data_message(error, named_files):
  """One line for a DataLossError met while reading `named_files` ([(flag,
  files)]): the damaged file, found by reading each file again (a cost
  paid only after a failure), its flag and what to do."""
  for flag, files in named_files:
    # Eight at a time, stopping at the first damaged file: at ImageNet's
    # size a whole second read would be 140 GB.
    for start in range(0, len(files), 8):
      chunk = files[start : start + 8]
      for path, problem in zip(chunk, _problems(chunk)):
        if problem:
          return (
            f"--{flag}: {path} is damaged ({problem}); copy it again, or "
            "read past it with --skip_corrupt (the rest of that file is lost)"
          )
  # Every file reads whole from here (damage seen by a tf.data service
  # worker, or on its way from storage).
  flags_named = "/".join(f"--{flag}" for flag, _ in named_files)
  return (
    f"damaged TFRecord data in {flags_named} ({describe(error)}); python -m "
    "trainer.prepare --verify PATTERN names the file; --skip_corrupt skips "
    "unreadable records"
  )


def _read_counts(path):
  if not path or not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
