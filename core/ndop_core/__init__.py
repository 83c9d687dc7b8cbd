"""ndop_core: what the ndop client and server both speak, and nothing either side owns.

Generated protocol stubs (`ndop_core.proto`), the RFC 9497 OPRF and RFC 9380
expand_message_xmd (`ndop_core.crypto`, the hazardous layer), NHS number rules, the hashed-mode
digest scheme, the filter scheme, batch packing, purposes, the receipt format and its
verification, the files both sides read, the parameters this implementation negotiates, and the
base errors. The server never imports the SDK and the SDK never imports the server; both import
this package.

Importing `ndop_core` itself loads nothing heavy: import the module you need.
"""
