#!/usr/bin/env python3
"""Regenerates vectors.json: known answers for Coffer's composed constructions,
computed with independent implementations (pyca/cryptography, argon2-cffi).

    pip install cryptography argon2-cffi
    python3 crates/crypto/tests/kat/generate.py > crates/crypto/tests/kat/vectors.json

The Rust tests (crates/crypto/tests/kat.rs) must reproduce every value here.
"""
import hashlib
import hmac
import json
import struct

import argon2.low_level as a2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def hkdf(ikm, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm)


def seal(key, purpose, iv, aad, plaintext):
    enc = hkdf(key, f"coffer/v1/{purpose}/enc".encode())
    mac = hkdf(key, f"coffer/v1/{purpose}/mac".encode())
    encryptor = Cipher(algorithms.AES(enc), modes.CFB(iv)).encryptor()
    ct = encryptor.update(plaintext) + encryptor.finalize()
    tag = hmac.new(mac, b"\x01" + struct.pack(">I", len(aad)) + aad + iv + ct, hashlib.sha256).digest()
    return b"\x01" + iv + ct + tag


def pattern(n, seed):
    return bytes((i * 31 + seed) % 251 for i in range(n))


file_key = pattern(32, 1)
file_id = pattern(16, 2)
iv = pattern(16, 3)

chunks = []
for index, size in [(0, 0), (1, 1), (7, 100), (65536, 4096)]:
    plaintext = pattern(size, 4)
    aad = file_id + struct.pack(">Q", index)
    sealed = seal(file_key, "chunk", iv, aad, plaintext)
    chunks.append({
        "index": index,
        "plaintext_len": size,
        "sealed": sealed.hex(),
        "content_address": hashlib.sha256(sealed).hexdigest(),
    })

folder_key = pattern(32, 5)
folder_id = "f-0123"
epoch = 3
file_key_aad = struct.pack(">I", len(folder_id)) + folder_id.encode() + struct.pack(">Q", epoch) + file_id
wrapped_file_key = seal(folder_key, "file-key", iv, file_key_aad, file_key)

meta_plain = (b"\x01" + hashlib.sha256(b"hello").digest() + struct.pack(">Q", 5)
              + struct.pack(">q", -12345) + struct.pack(">I", 0o644) + struct.pack(">H", 4) + "é.t".encode())
meta_sealed = seal(file_key, "meta", iv, file_id, meta_plain)

salt = pattern(16, 6)
password = "correct horse battery staple"
argon = a2.hash_secret_raw(password.encode(), salt, 2, 256, 1, 32, a2.Type.ID)

private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
oaep = lambda label: padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)
wrapped_folder_key = private.public_key().encrypt(folder_key, oaep(b"coffer/v1/folder-key"))
wrapped_share_key = private.public_key().encrypt(file_key, oaep(b"coffer/v1/file-key"))
spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

print(json.dumps({
    "file_key": file_key.hex(),
    "file_id": file_id.hex(),
    "iv": iv.hex(),
    "plaintext_seed": 4,
    "chunks": chunks,
    "folder_key": folder_key.hex(),
    "folder_id": folder_id,
    "epoch": epoch,
    "wrapped_file_key": wrapped_file_key.hex(),
    "meta_sealed": meta_sealed.hex(),
    "argon2id": {"password": password, "salt": salt.hex(), "m_cost_kib": 256, "t_cost": 2, "p_cost": 1,
                 "key": argon.hex()},
    "login_secret": {"username": "alice", "password": "pw",
                     "secret": hashlib.sha256(b"coffer-auth-v1alice:pw").hexdigest()},
    "rsa": {"private_pkcs8": der.hex(), "public_spki": spki.hex(),
            "wrapped_folder_key": wrapped_folder_key.hex(), "wrapped_share_key": wrapped_share_key.hex(),
            "public_spki_1024": small.hex()},
}, indent=1))
