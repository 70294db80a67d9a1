"""Price lists, charges, BHYT coverage and co-pay, invoices, VietQR payments, e-invoice and claim export."""
