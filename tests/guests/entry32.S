# 32-bit protected mode, entered through veil_vcpu::x86_64::setup_entry on the GDT the
# entry tests write. Shows what mode the guest really runs in and which registers it got.
#
# Reports (32-bit `out` to port 0x10), in order:
#   CR0, CR4, EFER (low half)         the control registers the guest sees
#   CS, DS, SS, TR selectors          the segments it runs on
#   EBX                               the value the host preset
#   the address of `here`            from call/pop: the stack works, code runs where linked
# The reports come out right only in 32-bit mode: in 16-bit mode `out 0x10, eax` writes
# two bytes and `mov ecx, imm32` takes a 16-bit immediate, in 64-bit mode `pop eax` does
# not exist.

.intel_syntax noprefix
.code32
.text
.global _start
_start:
    mov eax, cr0
    out 0x10, eax
    mov eax, cr4
    out 0x10, eax
    mov ecx, 0xc0000080         # IA32_EFER
    rdmsr
    out 0x10, eax

    xor eax, eax
    mov ax, cs
    out 0x10, eax
    mov ax, ds
    out 0x10, eax
    mov ax, ss
    out 0x10, eax
    str ax
    out 0x10, eax

    mov eax, ebx
    out 0x10, eax

    call here
here:
    pop eax
    out 0x10, eax
    hlt
