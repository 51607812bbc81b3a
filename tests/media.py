"""Small media files written with PyAV for the tests (imports av lazily)."""


def write_audio(path, codec="aac", seconds=0.5, rate=44100):
    """An audio-only file: `seconds` of silence encoded with `codec` ('aac', 'mp2', ...)."""
    import pytest

    av = pytest.importorskip("av")

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        fmt = s.codec_context.codec.audio_formats[0].name
        size = s.codec_context.frame_size or 1024
        for i in range(int(seconds * rate) // size):
            frame = av.AudioFrame(format=fmt, layout="mono", samples=size)
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.sample_rate, frame.pts = rate, i * size
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_video(path, n=20, rate=10, level=0):
    """`n` flat grey frames at `rate` fps (64x80 mpeg4), brightening from `level`; parents are made."""
    import numpy as np
    import pytest

    av = pytest.importorskip("av")

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=rate)
        s.height, s.width, s.pix_fmt = 64, 80, "yuv420p"
        for i in range(n):
            img = np.full((64, 80, 3), (level + 5 * i) % 200, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path
