"""Checks every checkpoint of meshgate audit logs without meshgate (docs/audit.md, "Checkpoints").

    python3 scripts/audit_checkpoints.py BUNDLE.pem LOG_FILE...

For each checkpoint: it signs the record before it; its leaf names the actor; each certificate
of its chain was valid at the checkpoint's time and is signed by the next, the last by a root
of the bundle, every issuer a CA; and its signature over the documented message verifies with
the leaf's key. Needs the `cryptography` package (42 or later). This is a cross-check of the
signatures, not of the whole X.509-SVID profile (`meshgate audit verify --bundle` checks that);
the hash chain is the recipe in "The hash", the interval rules are `audit verify`'s.
Exits 1 at the first checkpoint that fails.
"""

import base64
import datetime
import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

roots = x509.load_pem_x509_certificates(open(sys.argv[1], "rb").read())
for path in sys.argv[2:]:
    for raw in open(path, "rb"):
        rec = json.loads(raw)
        if rec["action"] != "checkpoint":
            continue
        d = rec["details"]
        try:
            assert d["version"] == 1, "unknown version"
            assert d["head_seq"] == rec["seq"] - 1 and d["head_hash"] == rec["prev"], "wrong head"
            certs = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in d["certs"]]
            at = datetime.datetime.fromisoformat(rec["time"].replace("Z", "+00:00"))
            san = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
            assert uris == [rec["actor"]], f"signer {uris} is not the actor {rec['actor']}"
            for cert in certs:
                assert cert.not_valid_before_utc <= at <= cert.not_valid_after_utc, "not valid then"
            for cert, issuer in zip(certs, certs[1:]):
                assert issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
                cert.verify_directly_issued_by(issuer)
            anchors = [r for r in roots if r.subject == certs[-1].issuer]
            assert anchors, "no root of the bundle issued the chain"
            anchors[0].verify_directly_issued_by(anchors[0])
            certs[-1].verify_directly_issued_by(anchors[0])
            message = (
                "meshgate-audit-checkpoint-v1\n"
                f"component={rec['component']}\nsigner={rec['actor']}\ntime={rec['time']}\n"
                f"head_seq={d['head_seq']}\nhead_hash={d['head_hash']}\n"
                f"every_records={d['every_records']}\nevery_seconds={d['every_seconds']}\n"
                f"trigger={d['trigger']}\n"
            ).encode()
            key, signature = certs[0].public_key(), base64.b64decode(d["signature"])
            if d["alg"] == "ed25519":
                key.verify(signature, message)
            else:
                digest = {"ecdsa_p256_sha256": hashes.SHA256(), "ecdsa_p384_sha384": hashes.SHA384()}
                key.verify(signature, message, ec.ECDSA(digest[d["alg"]]))
        except Exception as e:  # noqa: BLE001 - any failure is a forged checkpoint
            print(f"{path}: seq {rec['seq']}: forged checkpoint: {e!r}")
            sys.exit(1)
        print(f"{path}: seq {rec['seq']}: checkpoint signed by {rec['actor']}: ok")
