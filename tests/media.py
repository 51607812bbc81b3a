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
