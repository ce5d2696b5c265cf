"""The progress printer: loops with elapsed and remaining time, Keras callbacks, quiet mode."""

import io
import logging

import numpy as np
import pytest
import tf_keras

from tfpeft.data import encode_texts, encode_texts_in_chunks
from tfpeft.progress import Progress, format_duration


class FakeClock:
    """A clock that moves only when a test sets ``now``, so printed times are exact."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make_progress(verbose=1, interval=10.0):
    clock = FakeClock()
    stream = io.StringIO()
    return Progress(verbose, stream, interval=interval, clock=clock), clock, stream


def test_format_duration():
    assert format_duration(4.25) == "4.2 s"
    assert format_duration(59.94) == "59.9 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(3725) == "1 h 02 min"
    assert format_duration(-1) == "0.0 s"


def test_task_prints_elapsed_and_remaining():
    progress, clock, stream = make_progress()
    task = progress.task("Tokenizing", 400, "texts")
    clock.now += 5
    task.advance(100)  # 5 s after the start: within the interval, no line
    clock.now += 5
    task.advance(100)  # 10 s: due; 200 of 400 in 10 s leaves about 10 s
    clock.now += 3
    task.advance(100)  # 3 s after the last line: not due
    clock.now += 9
    task.advance(100)  # the last unit always prints
    assert stream.getvalue().splitlines() == [
        "[   10.0s] Tokenizing: 200/400 texts (50%); 10.0 s elapsed, about 10.0 s left",
        "[   22.0s] Tokenizing: 400/400 texts (100%); done in 22.0 s",
    ]


def test_task_without_total_counts_only():
    progress, clock, stream = make_progress(interval=0)
    task = progress.task("Predicting", 0, "batches")
    clock.now += 2
    task.advance(3)
    assert stream.getvalue() == "[    2.0s] Predicting: 3 batches; 2.0 s elapsed\n"


def test_quiet_prints_nothing_but_logs(caplog):
    progress, clock, stream = make_progress(verbose=0, interval=0)
    with caplog.at_level(logging.DEBUG, logger="tfpeft.progress"):
        progress.step("Reading data")
        task = progress.task("Tokenizing", 2, "texts")
        task.advance(2)
        progress.block("a table")
    assert stream.getvalue() == ""
    assert [record.getMessage() for record in caplog.records] == [
        "Reading data",
        "Tokenizing: 2/2 texts (100%); done in 0.0 s",
    ]
    assert all(record.levelno == logging.DEBUG for record in caplog.records)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert_dir)


def test_chunked_encoding_equals_whole(tiny_tokenizer):
    texts = [("goal match " * (i % 9)) + "vote" for i in range(23)] + ["", "chip"]
    whole = encode_texts(tiny_tokenizer, texts, 16)
    progress, clock, stream = make_progress(interval=0)
    task = progress.task("Tokenizing", len(texts), "texts")
    chunked = encode_texts_in_chunks(tiny_tokenizer, texts, 16, task=task, chunk_size=7)
    np.testing.assert_array_equal(chunked.input_ids, whole.input_ids)
    np.testing.assert_array_equal(chunked.lengths, whole.lengths)
    assert chunked.input_ids.dtype == np.int32
    assert chunked.pad_token_id == whole.pad_token_id
    counts = [line.split(": ")[1].split(" ")[0] for line in stream.getvalue().splitlines()]
    assert counts == ["7/25", "14/25", "21/25", "25/25"]


def test_chunked_encoding_of_no_texts(tiny_tokenizer):
    encoded = encode_texts_in_chunks(tiny_tokenizer, [], 16, chunk_size=4)
    assert len(encoded) == 0
    assert encoded.input_ids.shape == (0, 1)
    assert encoded.pad_token_id == tiny_tokenizer.pad_token_id == 0


def tiny_dense_model():
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))])
    model.compile(optimizer="sgd", loss="mse")
    return model


class ClockTicks(tf_keras.callbacks.Callback):
    """Move the fake clock 1 s per training step, before the progress callback reads it."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def on_train_batch_end(self, batch, logs=None):
        self.clock.now += 1.0


def test_fit_callback_prints_epochs_and_steps():
    progress, clock, stream = make_progress(interval=2.5)
    model = tiny_dense_model()
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32)
    model.fit(x, y, batch_size=2, epochs=2, verbose=progress.keras_verbose,
              callbacks=[ClockTicks(clock), progress.fit_callback()])
    lines = stream.getvalue().splitlines()
    # 4 steps an epoch, 1 s each: a step line after 3 s, then the epoch line.
    assert [line.split(":")[0] for line in lines] == [
        "[    3.0s] Epoch 1/2, step 3/4",
        "[    4.0s] Epoch 1/2",
        "[    7.0s] Epoch 2/2, step 3/4",
        "[    8.0s] Epoch 2/2",
    ]
    assert lines[0].endswith("; 3.0 s elapsed, about 5.0 s left")
    assert lines[1].startswith("[    4.0s] Epoch 1/2: loss ")
    assert lines[1].endswith("; 4.0 s elapsed, about 4.0 s left")
    assert lines[3].endswith("; done in 8.0 s")


def test_fit_callback_reports_early_stop():
    progress, clock, stream = make_progress(interval=100)
    model = tiny_dense_model()
    stop = tf_keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: setattr(model, "stop_training", True))
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    model.fit(x, y, batch_size=2, epochs=5, verbose=0, callbacks=[ClockTicks(clock), progress.fit_callback(), stop])
    lines = stream.getvalue().splitlines()
    assert lines[-1] == "[    2.0s] Training stopped after 1 of 5 epochs; 2.0 s elapsed"


def test_predict_callback_counts_batches():
    progress, clock, stream = make_progress(interval=100)
    model = tiny_dense_model()
    model.predict(np.ones((10, 3), np.float32), batch_size=4, verbose=0,
                  callbacks=[progress.predict_callback("Predicting")])
    assert stream.getvalue().splitlines() == ["[    0.0s] Predicting: 3/3 batches (100%); done in 0.0 s"]
