# kerbside node firmware - minimal CBOR (RFC 8949) for MicroPython and CPython.
#
# Why our own: the node needs a few hundred bytes of code, not a library, and
# the payloads must be byte-identical to docs/wire/vectors.json, so encoding is
# always the shortest form with definite lengths ("preferred serialisation").
# Floats are deliberately unsupported: the wire contract carries scaled ints.


class CBORError(ValueError):
    pass


def write_head(buf, major, n):
    m = major << 5
    if n < 24:
        buf.append(m | n)
    elif n < 0x100:
        buf.append(m | 24)
        buf.append(n)
    elif n < 0x10000:
        buf.append(m | 25)
        buf.extend(n.to_bytes(2, "big"))
    elif n < 0x100000000:
        buf.append(m | 26)
        buf.extend(n.to_bytes(4, "big"))
    elif n < 0x10000000000000000:
        buf.append(m | 27)
        buf.extend(n.to_bytes(8, "big"))
    else:
        raise CBORError("int too large")


def encode_into(buf, obj):
    """Append the CBOR encoding of obj to the bytearray buf."""
    if obj is None:
        buf.append(0xF6)
    elif obj is True:
        buf.append(0xF5)
    elif obj is False:
        buf.append(0xF4)
    elif isinstance(obj, int):
        if obj >= 0:
            write_head(buf, 0, obj)
        else:
            write_head(buf, 1, -1 - obj)
    elif isinstance(obj, (bytes, bytearray)):
        write_head(buf, 2, len(obj))
        buf.extend(obj)
    elif isinstance(obj, str):
        b = obj.encode()
        write_head(buf, 3, len(b))
        buf.extend(b)
    elif isinstance(obj, (list, tuple)):
        write_head(buf, 4, len(obj))
        for x in obj:
            encode_into(buf, x)
    elif isinstance(obj, dict):
        write_head(buf, 5, len(obj))
        for k in obj:
            encode_into(buf, k)
            encode_into(buf, obj[k])
    else:
        raise CBORError("cannot encode " + str(type(obj)))


def dumps(obj):
    buf = bytearray()
    encode_into(buf, obj)
    return bytes(buf)


def _read_head(data, pos):
    if pos >= len(data):
        raise CBORError("truncated")
    ib = data[pos]
    major = ib >> 5
    info = ib & 31
    pos += 1
    if info < 24:
        return major, info, pos
    if info > 27:
        # indefinite lengths and reserved values are not part of the contract
        raise CBORError("unsupported additional info")
    size = 1 << (info - 24)
    if pos + size > len(data):
        raise CBORError("truncated")
    return major, int.from_bytes(data[pos:pos + size], "big"), pos + size


def _decode(data, pos, depth):
    if depth > 16:
        raise CBORError("nested too deeply")
    major, n, pos = _read_head(data, pos)
    if major == 0:
        return n, pos
    if major == 1:
        return -1 - n, pos
    if major == 2 or major == 3:
        end = pos + n
        if end > len(data):
            raise CBORError("truncated")
        raw = bytes(data[pos:end])
        return (raw if major == 2 else raw.decode()), end
    if major == 4:
        if n > len(data) - pos:
            raise CBORError("truncated")
        out = []
        for _ in range(n):
            item, pos = _decode(data, pos, depth + 1)
            out.append(item)
        return out, pos
    if major == 5:
        if 2 * n > len(data) - pos:
            raise CBORError("truncated")
        out = {}
        for _ in range(n):
            k, pos = _decode(data, pos, depth + 1)
            v, pos = _decode(data, pos, depth + 1)
            out[k] = v
        return out, pos
    if major == 7:
        if n == 20:
            return False, pos
        if n == 21:
            return True, pos
        if n == 22:
            return None, pos
        raise CBORError("unsupported simple/float value")
    raise CBORError("tags are not supported")


def loads(data):
    """Decode one CBOR item; the node only ever parses commands sent to it."""
    obj, pos = _decode(data, 0, 0)
    if pos != len(data):
        raise CBORError("trailing bytes")
    return obj
