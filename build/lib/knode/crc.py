# kerbside node firmware - CRC-8 (poly 0x31, init 0xFF): Sensirion's sensor CRC,
# reused to guard ring-buffer records on flash, so one tested routine does both.


def crc8(data, start=0, end=None):
    crc = 0xFF
    if end is None:
        end = len(data)
    for i in range(start, end):
        crc ^= data[i]
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc
