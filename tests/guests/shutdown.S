# Reports 0x5d (port 0x10), then divides by zero. With no IDT loaded the #DE cannot be
# delivered: double fault, triple fault, and KVM reports a shutdown.

.intel_syntax noprefix
.code64
.text
.global _start
_start:
    mov eax, 0x5d
    out 0x10, eax
    xor ecx, ecx
    xor edx, edx
    mov eax, 1
    div ecx
    # Not reached.
    hlt
